"""eSpeak NG through ctypes, using the library and data shipped by the espeakng-loader wheel.

Options: ``voice`` (an eSpeak voice file name such as ``en-US`` or a language
code such as ``en-gb``, default ``en``), ``variant`` (``f3``, ``m1``, ...),
``rate`` (words per minute, 80-450), ``pitch`` (0-100).

The library runs in synchronous mode: ``espeak_Synth`` returns only when the
text is done, calling our callback with each buffer on the way. It runs on one
persistent helper thread (started with the engine: a thread per text cost
~0.2 ms of a ~5 ms sentence) that hands buffers to the generator through a
queue, so a long text streams out buffer by buffer instead of all at the end.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import queue
import sys
import threading
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Iterator, Mapping

from idlakd.worker.engines.base import Engine, EngineError, Word

logger = logging.getLogger(__name__)

# Values from speak_lib.h (eSpeak NG API revision 12).
AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
INITIALIZE_DONT_EXIT: Final = 0x8000
POS_CHARACTER: Final = 1
CHARS_UTF8: Final = 1
ENDPAUSE: Final = 0x1000
PARAM_RATE: Final = 1
PARAM_VOLUME: Final = 2
PARAM_PITCH: Final = 3
PARAM_RANGE: Final = 4
PARAM_WORDGAP: Final = 7
# eSpeak's own defaults for what a voice file does not set.
DEFAULT_RATE: Final = 175
DEFAULT_VOLUME: Final = 100
DEFAULT_PITCH: Final = 50
DEFAULT_RANGE: Final = 50
EE_OK: Final = 0
EVENT_LIST_TERMINATED: Final = 0
EVENT_WORD: Final = 1
# eSpeak's limits for the parameters prosody sets.
RATE_LIMITS: Final = (80, 450)
PITCH_LIMITS: Final = (0, 100)
VOLUME_LIMITS: Final = (0, 200)
# Pitch parameter steps per semitone: eSpeak's pitch table spans about two octaves over 0-100
# (a rough fit: SSML pitch in semitones is approximate on eSpeak).
PITCH_STEPS_PER_SEMITONE: Final = 100 / 24
# Milliseconds of sound per callback buffer, and so per audio frame a worker
# sends: small enough to stream promptly (eSpeak makes 500 ms of sound in about
# 1 ms), large enough that the per-frame cost in the worker, the daemon and the
# client stays small (200 ms meant ~18 frames per sentence; 500 ms, ~8).
BUFFER_MS: Final = 500
DEFAULT_VOICE: Final = "en"

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)


def _loader() -> Any:
    """The espeakng_loader module, imported on first use (the wheel ships no type hints)."""
    import espeakng_loader  # type: ignore[import-untyped]
    return espeakng_loader


def library_path() -> str:
    """Path of the libespeak-ng shared library from the espeakng-loader wheel."""
    return str(_loader().get_library_path())


def data_path() -> str:
    """Path of the espeak-ng-data directory from the espeakng-loader wheel."""
    return str(_loader().get_data_path())


@dataclass(frozen=True)
class VoiceIndex:
    """What the espeak-ng-data directory offers, read from its files without loading eSpeak."""

    by_name: dict[str, str]  # lower-cased file name or "name" line -> identifier (e.g. "gmw/en-US")
    by_language: dict[str, tuple[int, str]]  # language code -> (priority, identifier), best kept
    variants: frozenset[str]  # lower-cased variant file names (voices/!v)


@functools.lru_cache(maxsize=4)
def voice_index(data_dir: str) -> VoiceIndex:
    """Index the voice files under data_dir/lang and the variants under data_dir/voices/!v."""
    by_name: dict[str, str] = {}
    by_language: dict[str, tuple[int, str]] = {}
    lang_dir = Path(data_dir, "lang")
    for path in sorted(lang_dir.rglob("*")):
        if not path.is_file():
            continue
        identifier = path.relative_to(lang_dir).as_posix()
        by_name.setdefault(path.name.lower(), identifier)
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if len(words) >= 2 and words[0] == "name":
                by_name.setdefault(" ".join(words[1:]).lower(), identifier)
            elif len(words) >= 2 and words[0] == "language":
                # eSpeak's default priority is 5; a lower number is a better match.
                priority = int(words[2]) if len(words) > 2 and words[2].isdigit() else 5
                code = words[1].lower()
                if code not in by_language or priority < by_language[code][0]:
                    by_language[code] = (priority, identifier)
    variant_dir = Path(data_dir, "voices", "!v")
    variants = frozenset(p.name.lower() for p in variant_dir.iterdir()) if variant_dir.is_dir() else frozenset()
    return VoiceIndex(by_name, by_language, variants)


def resolve_voice(name: str, data_dir: str) -> str | None:
    """The voice file identifier for a voice name or language code, or None if eSpeak has none."""
    index = voice_index(data_dir)
    key = name.strip().lower()
    if key in index.by_name:
        return index.by_name[key]
    if key in index.by_language:
        return index.by_language[key][1]
    return None


def missing_reason(options: Mapping[str, Any]) -> str | None:
    """Why an espeak voice with these options cannot work here (None: it can)."""
    try:
        data_dir = data_path()
        lib = library_path()
    except (ImportError, RuntimeError) as exc:
        return f"eSpeak NG is not available (espeakng-loader: {exc})"
    if not os.path.isfile(lib):
        return f"eSpeak NG library {lib} is missing"
    voice = options.get("voice", DEFAULT_VOICE)
    if not isinstance(voice, str) or resolve_voice(voice, data_dir) is None:
        return f"eSpeak NG has no voice {voice!r}"
    variant = options.get("variant")
    if variant is not None and (not isinstance(variant, str)
                                or variant.lower() not in voice_index(data_dir).variants):
        return f"eSpeak NG has no variant {variant!r}"
    for key, low, high in (("rate", 80, 450), ("pitch", 0, 100)):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not low <= value <= high):
            return f"option {key!r} must be a whole number from {low} to {high}"
    return None


class _Event(ctypes.Structure):
    """espeak_EVENT from speak_lib.h (the id union is pointer-sized)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_void_p)]


class _Request:
    """State shared between one synthesize() generator and the callback on the synth thread."""

    def __init__(self, words: bool, text: bytes, flags: int) -> None:
        self.chunks: queue.SimpleQueue[bytes | Word | BaseException | None] = queue.SimpleQueue()
        self.abort = False
        self.words = words
        self.text = text
        self.flags = flags
        #: Set once espeak_Synth has returned for this request (the library is free again).
        self.done = threading.Event()


class EspeakEngine(Engine):
    """eSpeak NG in synchronous mode; one instance per worker process (the library is global)."""

    native_prosody = frozenset({"rate", "pitch", "volume"})

    def __init__(self, options: Mapping[str, Any]) -> None:
        reason = missing_reason(options)
        if reason is not None:
            raise EngineError(reason)
        data_dir = data_path()
        self._lib = ctypes.CDLL(library_path())
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int

        # DONT_EXIT: a missing data directory must be an error we report, not exit().
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_dir.encode(),
                                     INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EngineError(f"espeak_Initialize failed ({rate}) with data {data_dir}")
        self.sample_rate = rate
        self._current: _Request | None = None
        # ctypes callbacks must stay referenced for as long as C may call them.
        self._callback = _SYNTH_CALLBACK(self._on_synth)
        lib.espeak_SetSynthCallback(self._callback)

        voice = str(options.get("voice", DEFAULT_VOICE))
        identifier = resolve_voice(voice, data_dir)
        assert identifier is not None  # checked by missing_reason above
        self._spec = identifier + (f"+{options['variant']}" if options.get("variant") else "")
        self._rate = int(options.get("rate", DEFAULT_RATE))
        self._pitch = int(options.get("pitch", DEFAULT_PITCH))
        self._parameters = (
            (PARAM_RATE, self._rate),
            (PARAM_VOLUME, DEFAULT_VOLUME),
            (PARAM_PITCH, self._pitch),
            (PARAM_RANGE, DEFAULT_RANGE),
            (PARAM_WORDGAP, 0),
        )
        self._lock = threading.Lock()
        # Requests for the synth thread; None stops it.
        self._jobs: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        # Whether a parameter or the voice may differ from the options (reset() restores them).
        self._changed = True
        self.reset()
        self._thread = threading.Thread(target=self._serve, name="espeak-synth", daemon=True)
        self._thread.start()
        logger.info("eSpeak NG voice %s loaded at %d Hz", self._spec, rate)

    def reset(self) -> None:
        """Select the voice again and set every parameter a text could have changed."""
        if not self._changed:
            # Nothing changed since the last reset: selecting the voice re-reads its files
            # (~2 % of a worker's time when every sentence is a request of its own).
            return
        status = self._lib.espeak_SetVoiceByName(self._spec.encode())
        if status != EE_OK:
            raise EngineError(f"espeak_SetVoiceByName({self._spec!r}) failed ({status})")
        for param, value in self._parameters:
            status = self._lib.espeak_SetParameter(param, value, 0)
            if status != EE_OK:
                raise EngineError(f"espeak_SetParameter({param}, {value}) failed ({status})")
        self._changed = False

    def set_prosody(self, rate: float, pitch: float, volume: float) -> None:
        """Rate, pitch and volume through eSpeak's own parameters (inside its limits)."""
        self._changed = True
        for param, value, (low, high) in (
                (PARAM_RATE, self._rate * rate, RATE_LIMITS),
                (PARAM_PITCH, self._pitch + pitch * PITCH_STEPS_PER_SEMITONE, PITCH_LIMITS),
                (PARAM_VOLUME, DEFAULT_VOLUME * 10 ** (volume / 20), VOLUME_LIMITS)):
            status = self._lib.espeak_SetParameter(param, min(max(round(value), low), high), 0)
            if status != EE_OK:
                raise EngineError(f"espeak_SetParameter({param}, {value}) failed ({status})")

    def _on_synth(self, wav: int | None, numsamples: int, events: int | None) -> int:
        """Callback from eSpeak (on the synth thread): queue the buffer; 1 asks eSpeak to stop."""
        request = self._current
        if request is None:
            return 1
        if request.words and events:
            event = ctypes.cast(events, ctypes.POINTER(_Event))
            index = 0
            while event[index].type != EVENT_LIST_TERMINATED:
                if event[index].type == EVENT_WORD:
                    # text_position counts characters from 1.
                    request.chunks.put(Word(event[index].text_position - 1, event[index].length,
                                            event[index].audio_position))
                index += 1
        if wav and numsamples > 0:
            data = ctypes.string_at(wav, numsamples * 2)
            if sys.byteorder == "big":
                samples = array("h", data)
                samples.byteswap()
                data = samples.tobytes()
            request.chunks.put(data)
        return 1 if request.abort else 0

    def _serve(self) -> None:
        """Synth thread: run each request's espeak_Synth to completion, until told to stop."""
        while (request := self._jobs.get()) is not None:
            self._run(request)

    def _run(self, request: _Request) -> None:
        """Run one espeak_Synth to completion, then signal the end (or the failure)."""
        try:
            buffer = ctypes.create_string_buffer(request.text)  # NUL-terminated copy
            status = self._lib.espeak_Synth(buffer, len(request.text) + 1, 0, POS_CHARACTER, 0,
                                            request.flags, None, None)
            if status != EE_OK and not request.abort:
                request.chunks.put(EngineError(f"espeak_Synth failed ({status})"))
        except Exception as exc:  # noqa: BLE001 - the consumer raises it; the thread serves on
            request.chunks.put(exc)
        finally:
            request.done.set()
            request.chunks.put(None)

    def synthesize(self, text: str) -> Iterator[bytes]:
        """Yield PCM per eSpeak buffer while the synth thread runs."""
        for item in self._speak(text, words=False):
            assert isinstance(item, bytes)
            yield item

    def synthesize_words(self, text: str) -> Iterator[bytes | Word]:
        """Yield PCM per eSpeak buffer, and eSpeak's word events as they come."""
        return self._speak(text, words=True)

    def _speak(self, text: str, words: bool) -> Iterator[bytes | Word]:
        """PCM (and word events if asked) while the synth thread runs."""
        # ENDPAUSE: consecutive chunks of one text need the sentence pause between them.
        # Never the SSML flag: the text is words only, and eSpeak's own markup
        # reader has memory-safety bugs (<audio src>, long xml:base).
        flags = CHARS_UTF8 | ENDPAUSE
        with self._lock:
            request = _Request(words, text.encode("utf-8"), flags)
            self._current = request
            self._jobs.put(request)
            # A text stopped half-way or failed may leave eSpeak mid-state: reset it fully.
            changed, self._changed = self._changed, True
            try:
                while True:
                    item = request.chunks.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                self._changed = changed  # spoken to the end: as it was
            finally:
                # If the consumer stopped early, the callback tells eSpeak to abort.
                request.abort = True
                request.done.wait()
                self._current = None

    def close(self) -> None:
        """Stop the synth thread, then shut eSpeak down."""
        self._jobs.put(None)
        self._thread.join()
        self._lib.espeak_Terminate()
