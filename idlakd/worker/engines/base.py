"""The Engine interface every engine implements, and the helpers the engines share."""

from __future__ import annotations

import abc
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


class EngineError(Exception):
    """An engine could not load or could not synthesise a request."""


@dataclasses.dataclass(frozen=True)
class Word:
    """A word the engine reached: its place in the text (characters) and in the text's audio."""

    start: int
    length: int
    #: Milliseconds from the start of this text's audio.
    ms: int


class Engine(abc.ABC):
    """One loaded voice: turns plain text into mono signed 16-bit little-endian PCM.

    The text is words only (the daemon's document model removed markup and
    control characters); an engine that reads markup must escape it.
    """

    #: Samples per second of everything synthesize() yields; fixed once loaded.
    sample_rate: int

    @abc.abstractmethod
    def synthesize(self, text: str) -> Iterator[bytes]:
        """Yield PCM (s16le, even-length chunks) as soon as the engine produces it."""

    #: Which of "rate", "pitch", "volume" set_prosody() applies; the others are not applied.
    native_prosody: frozenset[str] = frozenset()

    def synthesize_words(self, text: str) -> Iterator[bytes | Word]:
        """Like synthesize(), with a Word before or among the PCM for each word it reaches.

        Engines that cannot say where words fall yield the PCM only.
        """
        yield from self.synthesize(text)

    def set_prosody(self, rate: float, pitch: float, volume: float) -> None:
        """Say what follows at rate (factor), pitch (semitones), volume (dB) from the voice's own."""

    def reset(self) -> None:
        """Undo whatever an earlier request changed (called before every request)."""

    def close(self) -> None:
        """Release what the engine holds (the worker calls it before exiting)."""


def pyidlak_search_dir(idlak_root: Path) -> Path | None:
    """The directory holding the pyIdlak package: <root>/src (an Idlak checkout) or <root> itself."""
    for candidate in (idlak_root / "src", idlak_root):
        if (candidate / "pyIdlak").is_dir():
            return candidate
    return None


def command_program(argv: Any, directory: str) -> tuple[list[str] | None, str | None]:
    """Validate a command engine's argv and resolve its program: (argv, None) or (None, reason)."""
    if (not isinstance(argv, list) or not argv
            or not all(isinstance(arg, str) for arg in argv) or not argv[0]):
        return None, "option 'argv' must be a non-empty list of strings"
    program = argv[0]
    if os.sep in program:
        # A relative path is relative to the voice directory, so a voice can ship its own script.
        path = Path(directory, program) if directory and not os.path.isabs(program) else Path(program)
        if not path.is_file() or not os.access(path, os.X_OK):
            return None, f"program {program!r} not found or not executable"
        return [str(path), *argv[1:]], None
    found = shutil.which(program)
    if found is None:
        return None, f"program {program!r} not found on PATH"
    return [found, *argv[1:]], None
