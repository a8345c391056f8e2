"""Synthesis engines run inside a worker: the Engine interface, loading, and cheap voice checks.

Engines are imported lazily: the daemon calls ``missing_files`` (which never
loads eSpeak or imports pyIdlak, piper-tts or onnxruntime), only the worker
calls ``load_engine``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Final, Mapping

from idlakd.worker.engines.base import (Engine, EngineError, Word, command_program,
                                        pyidlak_search_dir)

__all__ = ["ENGINE_NAMES", "Engine", "EngineError", "Word", "command_program", "load_engine",
           "missing_files", "pyidlak_search_dir"]

ENGINE_NAMES: Final = ("espeak", "tangle", "command", "piper")


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
    if name == "piper":
        from idlakd.worker.engines.piper import PiperEngine
        return PiperEngine(directory, options)
    raise EngineError(f"unknown engine {name!r} (known: {', '.join(ENGINE_NAMES)})")


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
    if engine == "piper":
        from idlakd.worker.engines.piper import missing_reason as piper_missing
        return piper_missing(options, directory)
    _, reason = command_program(options.get("argv"), directory)
    return reason
