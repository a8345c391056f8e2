"""Synthesis engines run inside a worker: the Engine interface, loading, and cheap voice checks.

Engines are imported lazily: the daemon calls ``missing_files`` (which never
loads eSpeak or imports pyIdlak), only the worker calls ``load_engine``.
"""

from __future__ import annotations

import abc
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any, Final, Iterator, Mapping

ENGINE_NAMES: Final = ("espeak", "tangle", "command")


class EngineError(Exception):
    """An engine could not load or could not synthesise a request."""


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

    def reset(self) -> None:
        """Undo whatever an earlier request changed (called before every request)."""

    def close(self) -> None:
        """Release what the engine holds (the worker calls it before exiting)."""


def load_engine(name: str, directory: str, options: Mapping[str, Any],
                idlak_root: Path | None) -> Engine:
    """Load the named engine with a voice; raises EngineError when it cannot work."""
    if name == "espeak":
        from idlakd.worker.engines.espeak import EspeakEngine
        return EspeakEngine(options)
    if name == "tangle":
        from idlakd.worker.engines.tangle import TangleEngine
        return TangleEngine(directory, options, idlak_root)
    if name == "command":
        from idlakd.worker.engines.command import CommandEngine
        return CommandEngine(directory, options)
    raise EngineError(f"unknown engine {name!r} (known: {', '.join(ENGINE_NAMES)})")


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


def missing_files(engine: str, directory: str, options: dict[str, Any],
                  idlak_root: Path | None) -> str | None:
    """Why this voice cannot work on this machine (None: it can); cheap, loads no engine."""
    if engine not in ENGINE_NAMES:
        return f"unknown engine {engine!r} (known: {', '.join(ENGINE_NAMES)})"
    if directory and not os.path.isdir(directory):
        return f"voice directory {directory} does not exist"
    if engine == "espeak":
        from idlakd.worker.engines.espeak import missing_reason
        return missing_reason(options)
    if engine == "tangle":
        if not directory:
            return "engine 'tangle' needs a voice directory"
        if not os.path.isfile(os.path.join(directory, "voice.conf")):
            return f"no voice.conf in voice directory {directory}"
        if idlak_root is not None:
            if pyidlak_search_dir(idlak_root) is None:
                return f"no pyIdlak package under idlak_root {idlak_root} (expected {idlak_root}/src/pyIdlak)"
        elif importlib.util.find_spec("pyIdlak") is None:
            # find_spec on a top-level name locates the package without importing it.
            return "pyIdlak is not importable: set idlak_root to an Idlak checkout"
        return None
    _, reason = command_program(options.get("argv"), directory)
    return reason
