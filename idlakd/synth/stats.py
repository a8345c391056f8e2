"""The synthesizer's figures as typed records (admin page, metrics, readiness)."""

from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """One voice's workers and what they did."""

    voice_id: str
    version: str
    workers: int
    busy: int
    idle: int
    syntheses: int
    errors: int
    synthesis_seconds: float
    audio_seconds: float
    retired: bool


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """The audio cache's size and hits."""

    enabled: bool
    files: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int


@dataclasses.dataclass(frozen=True)
class SynthStats:
    """Everything the synthesizer counts: per voice, the limiter, requests, transcoders, cache."""

    voices: Mapping[str, PoolStats]
    syntheses: int
    synthesis_seconds: float
    audio_seconds: float
    retired_workers: int
    queue: int
    running: int
    streams: int
    max_concurrent: int
    max_queue: int
    max_streams: int
    requests: int
    failures: int
    disconnects: int
    transcoders: int
    cache: CacheStats

    @property
    def real_time_factor(self) -> float | None:
        """Synthesis seconds per second of audio since start (None before any audio)."""
        return self.synthesis_seconds / self.audio_seconds if self.audio_seconds > 0 else None
