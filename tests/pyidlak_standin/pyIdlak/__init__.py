"""Test stand-in for Idlak's pyIdlak: the TangleVoice interface with simple, real arithmetic.

Real Idlak cannot be installed from a package index, so the tests point
``idlak_root`` at ``tests/pyidlak_standin`` (the tangle engine accepts a root
that holds ``pyIdlak`` directly, or ``src/pyIdlak`` like a real checkout).

Like real pyIdlak it reads ``<voice_dir>/voice.conf`` (``lng``, ``acc``,
``spk``, ``srate``) and ``speak(text)`` returns float samples on the 16-bit
scale (what Idlak's MLSA vocoder produces). Each word becomes a sine tone whose
pitch depends on the word and whose length grows with its letters; a word
ending in ``!`` is overdriven past 32767 so the engine's clipping is exercised.

It misbehaves on purpose:
- it prints to stdout on load and on every speak, through ``print`` and through
  ``os.write(1, ...)`` as a C library would, to prove the worker's fd guard;
- text containing ``CRASH`` kills the process (``os._exit(9)``), ``HANG`` sleeps
  forever, ``RAISE`` raises ``RuntimeError``;
- text containing ``GARBAGE``, or any text when voice.conf has ``garbage=1``,
  writes junk into the worker's protocol fd. The fd guard makes that
  impossible by accident, so the stand-in looks for it as any code in the
  process could: the one pipe open for writing that is not stderr;
- text containing ``READFILE:<path>`` opens and reads that file first and lets
  any ``OSError`` (``PermissionError`` under the worker's Landlock sandbox)
  propagate, so a test can tell what the worker may read;
- text containing ``ALLOC:<MiB>`` allocates that many MiB (``bytes(n)``:
  calloc'd, so untouched pages cost nothing without a limit) and keeps it for
  the rest of the call, to prove the worker's memory limit;
- text containing ``SIGNAL0:<pid>`` sends signal 0 (an existence probe that
  still needs permission) to that process, letting ``PermissionError``
  propagate, to prove a worker cannot signal processes outside its sandbox;
- stand-in-only voice.conf keys: ``delay_per_sentence`` (seconds slept per
  sentence in speak, to simulate slow synthesis), ``load_delay`` (seconds slept
  while loading), ``garbage`` (see above).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
import stat
import time

_WORD = re.compile(r"\S+")
_READFILE = re.compile(r"READFILE:(\S+)")
_ALLOC = re.compile(r"ALLOC:(\d+)")
_SIGNAL0 = re.compile(r"SIGNAL0:(\d+)")
_SENTENCE_END = re.compile(r"[.!?]+(\s|$)")
SECONDS_PER_LETTER = 0.03
GAP_SECONDS = 0.02


def _protocol_fd() -> int | None:
    """The worker's private protocol fd: a write-only pipe other than stderr (fd 1 is stderr now)."""
    stderr = os.fstat(2)
    for fd in range(3, 256):
        try:
            info = os.fstat(fd)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue
        if (stat.S_ISFIFO(info.st_mode) and flags & os.O_ACCMODE == os.O_WRONLY
                and (info.st_dev, info.st_ino) != (stderr.st_dev, stderr.st_ino)):
            return fd
    return None


class TangleVoice:
    """A voice loaded from a directory with a voice.conf, as in pyIdlak."""

    def __init__(self, voice_dir: str | None = None, loglvl: int = logging.WARN) -> None:
        self.log = logging.getLogger("tangle")
        self.log.setLevel(loglvl)
        self._lng = ""
        self._acc = ""
        self._spk = ""
        self._conf: dict[str, str] = {}
        self._srate: int
        if voice_dir is not None:
            self.load_voice(voice_dir)

    @property
    def lng(self) -> str:
        """Language code from voice.conf."""
        return self._lng

    @property
    def acc(self) -> str:
        """Accent code from voice.conf."""
        return self._acc

    @property
    def spk(self) -> str:
        """Speaker name from voice.conf."""
        return self._spk

    @property
    def srate(self) -> int:
        """Sample rate; like real pyIdlak, only set when voice.conf has srate."""
        return self._srate

    def load_voice(self, voice_dir: str) -> None:
        """Read voice.conf (raising like pyIdlak when the directory or file is missing)."""
        voice_dir = os.path.abspath(str(voice_dir))
        if not os.path.isdir(voice_dir):
            raise IOError("Cannot find voice directory")
        with open(os.path.join(voice_dir, "voice.conf"), encoding="utf-8") as conf:
            for line in conf:
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    self._conf[key.strip()] = value.strip()
        self._lng = self._conf.get("lng", "")
        self._acc = self._conf.get("acc", "")
        self._spk = self._conf.get("spk", "")
        if "srate" in self._conf:
            self._srate = int(self._conf["srate"])
        print(f"stand-in pyIdlak: loading voice {voice_dir} (print to stdout)")
        os.write(1, b"stand-in pyIdlak: loaded (os.write to fd 1)\n")
        time.sleep(float(self._conf.get("load_delay", "0")))

    def speak(self, text: str) -> list[float]:
        """Synthesise text: one sine tone per word, a short gap after each."""
        print(f"stand-in pyIdlak: speaking {len(text)} characters (print to stdout)")
        os.write(1, b"stand-in pyIdlak: speak (os.write to fd 1)\n")
        if "GARBAGE" in text or self._conf.get("garbage") == "1":
            fd = _protocol_fd()
            if fd is not None:
                os.write(fd, b"this is not a frame header\n")
        if "CRASH" in text:
            os._exit(9)
        if "HANG" in text:
            while True:
                time.sleep(3600)
        if "RAISE" in text:
            raise RuntimeError("stand-in pyIdlak: RAISE requested")
        for path in _READFILE.findall(text):
            with open(path, "rb") as wanted:
                self.log.info("stand-in pyIdlak: read %d bytes of %s", len(wanted.read()), path)
        for pid in _SIGNAL0.findall(text):
            os.kill(int(pid), 0)
        hoard = [bytes(int(mib) * 1024 * 1024) for mib in _ALLOC.findall(text)]
        self.log.info("stand-in pyIdlak: holding %d MiB", sum(len(b) for b in hoard) >> 20)
        sentences = max(1, len(_SENTENCE_END.findall(text)))
        time.sleep(float(self._conf.get("delay_per_sentence", "0")) * sentences)
        rate = int(getattr(self, "_srate", 48000))
        samples: list[float] = []
        for word in _WORD.findall(text):
            letters = sum(ch.isalnum() for ch in word) or 1
            frequency = 120.0 + 15.0 * (sum(map(ord, word)) % 20)
            amplitude = 40000.0 if word.endswith("!") else 12000.0
            count = int(rate * SECONDS_PER_LETTER * letters)
            step = 2.0 * math.pi * frequency / rate
            samples.extend(amplitude * math.sin(step * i) for i in range(count))
            samples.extend([0.0] * int(rate * GAP_SECONDS))
        return samples

    def __repr__(self) -> str:
        """Like a voice description."""
        return f"<stand-in TangleVoice {self._lng}-{self._acc} {self._spk}>"


__all__ = ["TangleVoice"]
