"""Plain records passed between the store, the API and the synthesis path."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

ENGINES = ("espeak", "tangle", "command", "piper")
GENDERS = ("male", "female")


@dataclasses.dataclass(frozen=True)
class User:
    """A registered user (the password hash never leaves the store)."""

    uid: str
    admin: bool


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """An API key as listed: never the key itself nor its digest."""

    id: str
    uid: str
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None
    expires_at: float | None


@dataclasses.dataclass(frozen=True)
class Voice:
    """A voice as stored: public description plus engine, options and directory."""

    id: str
    name: str
    language: str
    accent: str
    gender: str
    engine: str = "espeak"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    directory: str = ""
    sample_rate: int | None = None
    updated_at: float = 0.0

    @property
    def version(self) -> str:
        """Changes whenever anything that shapes the audio changes (pools and cache key on it)."""
        blob = json.dumps([self.engine, self.options, self.directory, self.updated_at],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def public(self) -> dict[str, Any]:
        """The JSON object clients see: never the directory or options."""
        return {
            "voice_id": self.id,
            "id": self.id,
            "name": self.name,
            "language": self.language,
            "accent": self.accent,
            "gender": self.gender,
            "sample_rate": self.sample_rate,
            "engine": self.engine,
        }


@dataclasses.dataclass(frozen=True)
class Limits:
    """A user's quota limits: characters per minute and per UTC day, syntheses at once.

    As stored overrides, None means "the configured default"; as effective limits, 0 means none.
    """

    chars_per_minute: int | None = None
    chars_per_day: int | None = None
    concurrent: int | None = None


@dataclasses.dataclass(frozen=True)
class Usage:
    """One user's use: a UTC day's requests, characters and audio, a minute's characters, streams running."""

    day: str
    requests: int = 0
    characters: int = 0
    audio_seconds: float = 0.0
    minute_characters: int = 0
    running: int = 0


@dataclasses.dataclass(frozen=True)
class SynthesisCharge:
    """What one admitted synthesis adds to its user's usage, and its row among the running ones."""

    id: str
    uid: str
    day: str
    minute: int
    characters: int
    daemon: str
    started_at: float
    #: Whether the characters count in the minute's window too (a job's do not: it is spoken
    #: over hours, and must not use up its user's interactive allowance for the minute).
    per_minute: bool = True


#: A job's states: waiting, being synthesised, and the three ends.
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
#: The states a job is still working toward its audio in.
JOB_ACTIVE = ("queued", "running")


@dataclasses.dataclass(frozen=True)
class Job:
    """A long text synthesised in the background, its progress and where its result stands."""

    id: str
    uid: str
    voice_id: str
    audio_format: str
    #: sample_rate (the PCM rate of its groups and result), speed, pitch, volume, text_type.
    options: dict[str, Any]
    characters_total: int
    status: str = "queued"
    characters_done: int = 0
    audio_seconds: float = 0.0
    error: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    #: How many groups are synthesised and stored (the next one's index).
    next_group: int = 0
    #: Bytes of the finished result (0 until done).
    result_bytes: int = 0
