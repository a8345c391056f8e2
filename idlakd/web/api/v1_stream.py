"""GET /v1/speech/stream: a WebSocket that speaks text while it is still being written.

The client sends start, then text deltas (flush, clear, end between them); the
server sends audio as binary frames and events as JSON text frames. Sentences
go to the core's LiveSpeech as soon as they are complete, and its one audio
stream plays them in order; clear (barge-in) closes that stream and opens a new
one. docs/api.md has the message tables and close codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Final

from aiohttp import WSMsgType, web

from idlakd.errors import Busy, IdlakdError, MalformedRequest, NotAuthenticated, TooLarge
from idlakd.models import SynthesisCharge, User, Voice
from idlakd.synth.formats import AUDIO_FORMATS
from idlakd.synth.options import SAMPLE_RATE_RANGE, SPEED_RANGE, SpeechOptions
from idlakd.synth.synthesizer import LiveSpeech
from idlakd.synth.textbuffer import TextBuffer
from idlakd.web.api.v1_names import find_voice
from idlakd.web.audio import SHUTTING_DOWN, VOICE_NOT_FOUND
from idlakd.web.errors import socket_error
from idlakd.web.guard import socket_caller
from idlakd.web.keys import config_key, quotas_key, runtime_key, store_key, synth_key
from idlakd.web.validation import NOT_CHOICE, Fields

log = logging.getLogger(__name__)

#: Largest client message (a text delta, with its JSON around it).
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: How long a socket without credentials on its upgrade has to send its auth message.
AUTH_SECONDS: Final = 5.0
#: Pings keep idle proxies from dropping the socket and find peers that vanished.
HEARTBEAT_SECONDS: Final = 15.0
#: Flushes waiting for their audio at once (each is a small task).
MAX_PENDING_FLUSHES: Final = 64
#: Buffers longer than this are split into sentences off the loop.
INLINE_SPLIT_CHARS: Final = 2000
#: audio_format -> the core's format; "wav" is PCM without a header (a stream has no end to
#: write in one).
FORMATS: Final[dict[str, str]] = {"pcm": "pcm", "wav": "pcm", "mulaw": "mulaw", "alaw": "alaw",
                                  "opus": "opus", "mp3": "mp3"}
#: marks: true asks for these (plain text has no SSML marks).
MARK_TYPES: Final = frozenset({"sentence", "word"})
MESSAGE_TYPES: Final = ("auth", "start", "text", "flush", "clear", "end")
NOT_UPGRADE: Final = "This route takes a WebSocket upgrade (GET with Upgrade: websocket)"
NO_AUTH: Final = ("Send credentials: an Authorization header on the upgrade, or "
                  '{"type": "auth", "token": ...} first, within 5 s')
NOT_JSON: Final = "Messages are JSON objects in text frames"
START_FIRST: Final = "type: The first message must be start."
START_ONCE: Final = "type: start is sent once."
AUTH_FIRST: Final = "type: auth is only the first message."
AFTER_END: Final = "type: No message may follow end."
IDLE: Final = "No message for {:g} s: the socket is closed"


def _message(frame: Any) -> dict[str, Any]:
    """A client frame as a JSON object with a known type; MalformedRequest otherwise."""
    if frame.type is not WSMsgType.TEXT:
        raise MalformedRequest(NOT_JSON)
    try:
        message = json.loads(frame.data)
    except (ValueError, RecursionError):  # deep nesting ("[[[…") exhausts the parser's stack
        raise MalformedRequest(NOT_JSON) from None
    if not isinstance(message, dict):
        raise MalformedRequest(NOT_JSON)
    if message.get("type") not in MESSAGE_TYPES:
        raise MalformedRequest(f"type: {NOT_CHOICE} Valid choices: {'|'.join(MESSAGE_TYPES)}")
    return message


class ClientGone(Exception):
    """The client closed the socket or stopped reading: nothing more is sent."""


class StreamSession:
    """One socket's conversation: its text buffer, its LiveSpeech and the task that plays it."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self._request = request
        self._ws = ws
        self._config = request.app[config_key]
        self._loop = asyncio.get_running_loop()
        self._buffer = TextBuffer()
        self._user: User | None = None
        self._started: tuple[Voice, str, SpeechOptions] | None = None
        self._charge: SynthesisCharge | None = None
        self._live: LiveSpeech | None = None
        self._player: asyncio.Task[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._flush_count = 0
        self._ended = False
        self._closing = False  # the player is ending the socket (done, or its error)
        self._said = 0  # characters said over the whole session (usage)
        self._audio_seconds = 0.0  # of the audio streams already closed
        self._heard = self._loop.time()  # the client's last message, or the last audio sent
        self._say_by: float | None = None  # when waiting text is said (max_buffer_delay_ms)

    # -- the receiving side (the handler's task) -------------------------

    async def run(self) -> None:
        """Authenticate, then handle messages until the socket closes (done, error or client)."""
        self._user = await socket_caller(self._request, self._auth_token)
        while not self._ws.closed:
            try:
                frame = await self._ws.receive(timeout=self._wait_seconds())
            except TimeoutError:
                await self._quiet()
                continue
            if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                              WSMsgType.ERROR):
                return
            self._heard = self._loop.time()
            await self._handle(_message(frame))

    async def _auth_token(self) -> str:
        """The token of the first message, {"type": "auth", "token"}, read within AUTH_SECONDS."""
        try:
            frame = await self._ws.receive(timeout=AUTH_SECONDS)
        except TimeoutError:
            raise NotAuthenticated(NO_AUTH) from None
        if frame.type is not WSMsgType.TEXT:
            raise NotAuthenticated(NO_AUTH)
        message = _message(frame)
        fields = Fields(message)
        token = fields.string("token", required=True)
        if message["type"] != "auth" or token is None:
            raise NotAuthenticated(NO_AUTH)
        return token

    def _wait_seconds(self) -> float:
        """Until the buffer's delay runs out (text waiting) or the socket counts as idle."""
        now = self._loop.time()
        until = self._heard + self._config.stream_idle_seconds - now
        if self._say_by is not None:
            until = min(until, self._say_by - now)
        return max(until, 0.001)  # 0 would mean no timeout at all

    async def _quiet(self) -> None:
        """No message came in time: say the waiting text, or close an idle socket."""
        now = self._loop.time()
        if self._say_by is not None and now >= self._say_by:
            self._say_by = None  # (a wordless rest stays, and waits for more text)
            await self._say(self._buffer.rest())
        if now < self._heard + self._config.stream_idle_seconds:
            return
        if self._ended or (self._live is not None and self._live.unspoken):
            self._heard = now  # audio is still coming: not idle
            return
        raise MalformedRequest(IDLE.format(self._config.stream_idle_seconds), code="idle_timeout")

    async def _handle(self, message: dict[str, Any]) -> None:
        """One client message."""
        kind = message["type"]
        if self._ended:
            raise MalformedRequest(AFTER_END)
        if kind == "start":
            if self._started is not None:
                raise MalformedRequest(START_ONCE)
            await self._start(message)
            return
        if self._started is None:
            raise MalformedRequest(START_FIRST)
        if kind == "text":
            await self._text(message)
        elif kind == "flush":
            await self._flush()
        elif kind == "clear":
            await self._clear()
        elif kind == "end":
            await self._end()
        else:
            raise MalformedRequest(AUTH_FIRST)

    async def _start(self, message: dict[str, Any]) -> None:
        """start: check the fields, charge the quota's slot, open the speech, say started."""
        fields = Fields(message)
        voice_id = fields.string("voice_id", required=True, hint="Provide a voice id")
        audio_format = fields.choice("audio_format", tuple(FORMATS), default="pcm")
        sample_rate = fields.integer("sample_rate", SAMPLE_RATE_RANGE)
        speed = fields.number("speed", SPEED_RANGE, 1.0)
        marks = fields.boolean("marks", False)
        if audio_format is not None and sample_rate is not None:
            refused = AUDIO_FORMATS[FORMATS[audio_format]].refused_rate(sample_rate)
            if refused is not None:
                fields.error("sample_rate", refused)
        fields.check()
        assert voice_id is not None and audio_format is not None
        app = self._request.app
        voice = await find_voice(app[store_key], self._config, voice_id)
        if voice is None:
            raise MalformedRequest(f"voice_id: {VOICE_NOT_FOUND}.", code="voice_not_found")
        options = SpeechOptions(sample_rate=sample_rate, speed=speed,
                                marks=MARK_TYPES if marks else frozenset())
        core_format = FORMATS[audio_format]
        assert self._user is not None
        self._charge = await app[quotas_key].admit(self._user.uid, 0)
        self._started = (voice, core_format, options)
        await self._open()
        spec = AUDIO_FORMATS[core_format]
        rate = sample_rate or spec.default_rate or voice.sample_rate
        await self._send({"type": "started", "voice_id": voice.id, "audio_format": audio_format,
                          "sample_rate": rate,
                          "content_type": None if rate is None else spec.content_type_at(rate)})

    async def _text(self, message: dict[str, Any]) -> None:
        """text: add the delta; say what is complete."""
        fields = Fields(message)
        text = fields.string("text", required=True, max_length=None)
        fields.check()
        assert text is not None
        limit = self._config.max_text_length
        waiting = len(self._buffer) + len(text) + (0 if self._live is None else
                                                    self._live.unspoken)
        if waiting > limit:
            raise TooLarge(f"text: More than the limit of {limit} characters waiting to be "
                           "spoken.")
        self._buffer.add(text)
        if len(self._buffer) > INLINE_SPLIT_CHARS:
            piece = await asyncio.to_thread(self._buffer.ready)
        else:
            piece = self._buffer.ready()
        await self._say(piece)
        delay = self._config.max_buffer_delay_ms / 1000
        self._say_by = self._loop.time() + delay if len(self._buffer) else None

    async def _flush(self) -> None:
        """flush: say what is waiting; flushed once its audio has been sent."""
        self._say_by = None
        await self._say(self._buffer.rest())
        if len(self._flushes) >= MAX_PENDING_FLUSHES:
            raise TooLarge(f"type: More than {MAX_PENDING_FLUSHES} flushes waiting.")
        self._flush_count += 1
        assert self._live is not None
        task = asyncio.create_task(self._flushed(self._live, self._flush_count,
                                                 self._live.queued))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _clear(self) -> None:
        """clear (barge-in): drop the waiting text, stop the audio in flight, start afresh."""
        self._buffer.clear()
        self._say_by = None
        # Cancelled, the player sends nothing more: cleared can go before its workers stop.
        for task in [*self._flushes, *([] if self._player is None else [self._player])]:
            task.cancel()
        await self._send({"type": "cleared"})
        await self.stop()
        await self._open()

    async def _end(self) -> None:
        """end: say the rest; the player sends done and closes after the last audio."""
        self._say_by = None
        await self._say(self._buffer.rest())
        self._ended = True
        assert self._live is not None
        if self._live.queued:
            self._live.end()
            return
        await self.stop()  # nothing was said since start or clear: no audio will come
        await self._done()

    async def _say(self, piece: str) -> None:
        """Charge and say a piece of text (nothing for '')."""
        if not piece:
            return
        assert self._charge is not None and self._live is not None
        await self._request.app[quotas_key].spend(self._charge, len(piece))
        await self._live.say(piece)
        self._said += len(piece)

    # -- the speech and its player ----------------------------------------

    async def _open(self) -> None:
        """A new LiveSpeech (Busy when the limiter is full) and the task that plays it."""
        assert self._started is not None
        voice, core_format, options = self._started
        self._live = await self._request.app[synth_key].open_live(voice, core_format, options)
        self._player = asyncio.create_task(self._play(self._live))

    async def stop(self) -> None:
        """Close the current speech at once: its workers and ffmpeg stop; pending flushes go."""
        for task in list(self._flushes):
            task.cancel()
        if self._player is not None:
            self._player.cancel()
            await asyncio.gather(self._player, return_exceptions=True)
            self._player = None
        if self._live is not None:
            await self._live.aclose()  # (a player cancelled before it began never took it)
            self._live = None

    async def _play(self, live: LiveSpeech) -> None:
        """Send live's audio and marks as they come; done after its end, or the error."""
        failure: IdlakdError | None = None
        try:
            audio = await live.audio()
        except IdlakdError as exc:
            self._closing = True
            await self.fail(exc)
            return
        try:
            async for data in audio:
                await self._send_audio(data)
                for mark in audio.take_marks():
                    await self._send({"type": "mark", "mark": mark.wire()})
        except IdlakdError as exc:
            failure = exc
        except ClientGone:
            audio.abandon()
            return
        finally:
            self._audio_seconds += audio.audio_seconds or 0.0
            await audio.aclose()
        self._closing = True
        if failure is not None:
            await self.fail(failure)
        else:
            await self._done()

    async def _flushed(self, live: LiveSpeech, flush_id: int, end: int) -> None:
        """Say flushed once the audio of the text up to end has been sent."""
        await live.until_spoken(end)
        try:
            await self._send({"type": "flushed", "id": flush_id})
        except ClientGone:
            pass

    async def _done(self) -> None:
        """done with the usage (after every flushed), then a normal close."""
        self._closing = True
        # Every flush's audio has been taken by now; its answer goes before done.
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._record()  # a client that asks for its usage after done sees this session
        await self._send({"type": "done", "usage": self.usage()})
        await self._ws.close()

    def usage(self) -> dict[str, Any]:
        """What the session used: characters said, seconds of audio made."""
        return {"characters": self._said, "audio_seconds": round(self._audio_seconds, 3)}

    # -- sending ------------------------------------------------------------

    async def _send_audio(self, data: bytes | memoryview) -> None:
        """A binary frame; a client that takes nothing for synthesis_timeout_seconds is dropped."""
        timeout = self._config.synthesis_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await self._ws.send_bytes(data)
        except TimeoutError:
            log.info("A speech stream's client read nothing for %g s: dropped", timeout)
            transport = self._request.transport
            if transport is not None:
                transport.abort()  # its unread frames would never drain
            raise ClientGone() from None
        except ConnectionError:
            raise ClientGone() from None
        self._heard = self._loop.time()

    async def _send(self, event: dict[str, Any]) -> None:
        """A JSON text frame (small: the socket's own buffer bounds it)."""
        if self._ws.closed:
            raise ClientGone()
        try:
            await self._ws.send_str(json.dumps(event))
        except ConnectionError:
            raise ClientGone() from None

    async def fail(self, exc: IdlakdError) -> None:
        """The error message, then the close code that fits it (once)."""
        if self._ws.closed:
            return
        close, code = socket_error(exc)
        await self._record()
        try:
            await self._send({"type": "error", "message": exc.message, "code": code})
        except ClientGone:
            return
        await self._ws.close(code=close, message=code.encode()[:120])

    async def _record(self) -> None:
        """Record the session's usage; its quota slot ends (once)."""
        if self._charge is not None:
            charge, self._charge = self._charge, None
            await self._request.app[quotas_key].finish(charge, self._audio_seconds,
                                                       served=self._said > 0)

    async def aclose(self) -> None:
        """Stop everything of the session and record its usage, even when cancelled."""
        try:
            if self._closing and self._player is not None:
                # The player is closing the socket (done or an error): let it finish.
                await asyncio.gather(self._player, return_exceptions=True)
        finally:
            # A client's own close ends the handler by cancelling it, perhaps in the middle
            # of this: the speech must stop and the quota slot end all the same.
            try:
                await self.stop()
            finally:
                await self._record()


async def speech_stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/speech/stream (WebSocket): start, text deltas, flush, clear, end -> audio frames,
    marks and events; errors as an error message and a close code."""
    if request.app[runtime_key].stopping:
        raise Busy(SHUTTING_DOWN, retry_after=5)
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=HEARTBEAT_SECONDS)
    if not ws.can_prepare(request).ok:
        raise MalformedRequest(NOT_UPGRADE)
    await ws.prepare(request)
    session = StreamSession(request, ws)
    try:
        await session.run()
    except IdlakdError as exc:
        await session.stop()  # its usage complete before the error is sent
        await session.fail(exc)
    except ClientGone:
        pass  # nothing more can be sent
    finally:
        await session.aclose()
        if not ws.closed:
            # A bug (logged by the error middleware) or a failed store: a server error.
            await ws.close(code=1011)
    return ws
