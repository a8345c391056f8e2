"""Idlak (pyIdlak's TangleVoice) as an engine.

The voice is loaded once per worker (slow: Kaldi models). ``speak(text)``
returns the whole waveform of the text as float samples at the voice's
``srate``. In real Idlak these floats are already on the 16-bit scale (the
MLSA vocoder output; Idlak's own WAV writer and the original REST server clip
them to [-32768, 32767]), so that is the default here. Option
``sample_scale: "unit"`` handles a pyIdlak build that returns [-1, 1] floats.

Idlak wraps the text in ``<doc>...</doc>`` and parses it as XML, so the text
is always XML-escaped: the daemon's document model has already read any
markup of the request (breaks arrive as silence, not as tags).
"""

from __future__ import annotations

import logging
import math
import sys
from array import array
from pathlib import Path
from typing import Any, Final, Iterable, Iterator, Mapping
from xml.sax.saxutils import escape

from idlakd.worker.engines.base import Engine, EngineError, pyidlak_search_dir

logger = logging.getLogger(__name__)

# Idlak's vocoder default, and what the original server wrote into every WAV.
DEFAULT_SRATE: Final = 48000
# Samples per yielded chunk: 64 KiB of PCM, one protocol frame.
CHUNK_SAMPLES: Final = 32768
SCALES: Final = {"int16": 1.0, "unit": 32767.0}


def read_voice_conf(directory: str | Path) -> dict[str, str]:
    """The key=value pairs of <directory>/voice.conf; Kaldi-style `--key=value` counts as key."""
    values: dict[str, str] = {}
    with open(Path(directory, "voice.conf"), encoding="utf-8", errors="replace") as conf:
        for line in conf:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip().lstrip("-")] = value.strip()
    return values


def to_pcm(samples: Iterable[float], scale: float) -> Iterator[bytes]:
    """Scale, round and clip float samples to int16; yield s16le chunks of CHUNK_SAMPLES."""
    tolist = getattr(samples, "tolist", None)
    if callable(tolist):
        # numpy arrays (and array.array): plain Python floats iterate much faster.
        samples = tolist()
    out = array("h")
    for value in samples:
        scaled = float(value) * scale
        if scaled >= 32767.0:
            out.append(32767)
        elif scaled <= -32768.0:
            out.append(-32768)
        elif math.isnan(scaled):
            out.append(0)
        else:
            out.append(round(scaled))
        if len(out) >= CHUNK_SAMPLES:
            yield _little_endian(out)
            out = array("h")
    if out:
        yield _little_endian(out)


def _little_endian(samples: array[int]) -> bytes:
    """The samples as little-endian bytes whatever the host byte order."""
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


class TangleEngine(Engine):
    """One pyIdlak TangleVoice loaded from a voice directory."""

    def __init__(self, directory: str, options: Mapping[str, Any], idlak_root: Path | None) -> None:
        scale_name = options.get("sample_scale", "int16")
        if scale_name not in SCALES:
            raise EngineError(f"option 'sample_scale' must be one of {', '.join(SCALES)}")
        self._scale = SCALES[scale_name]
        if idlak_root is not None:
            search_dir = pyidlak_search_dir(idlak_root)
            if search_dir is None:
                raise EngineError(f"no pyIdlak package under idlak_root {idlak_root}")
            sys.path.insert(0, str(search_dir))
        try:
            import pyIdlak  # type: ignore[import-not-found]  # Idlak's own, not on PyPI
        except ImportError as exc:
            raise EngineError(f"cannot import pyIdlak ({exc}); set idlak_root") from exc
        level = logging.getLogger().getEffectiveLevel()
        logger.info("loading Idlak voice from %s", directory)
        self._voice = pyIdlak.TangleVoice(voice_dir=directory, loglvl=level)
        self.sample_rate = self._find_srate(directory)
        logger.info("Idlak voice loaded at %d Hz", self.sample_rate)

    def _find_srate(self, directory: str) -> int:
        """The voice's sample rate: its srate attribute, else voice.conf, else Idlak's default."""
        try:
            srate = int(self._voice.srate)
        except (AttributeError, TypeError, ValueError):
            # Real TangleVoice only sets _srate when voice.conf has it, so the property can raise.
            try:
                srate = int(read_voice_conf(directory).get("srate", DEFAULT_SRATE))
            except (OSError, ValueError):
                srate = DEFAULT_SRATE
        if srate <= 0:
            raise EngineError(f"voice sample rate {srate} is not positive")
        return srate

    def synthesize(self, text: str) -> Iterator[bytes]:
        """Speak the whole text with Idlak, then yield it as PCM chunks."""
        waveform = self._voice.speak(escape(text))
        if waveform is None:
            raise EngineError("pyIdlak returned no waveform")
        yield from to_pcm(waveform, self._scale)
