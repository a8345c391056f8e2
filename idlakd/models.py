"""Plain records passed between the store, the API and the synthesis path."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

ENGINES = ("espeak", "tangle", "command")
GENDERS = ("male", "female")


@dataclasses.dataclass(frozen=True)
class User:
    """A registered user (the password hash never leaves the store)."""

    uid: str
    admin: bool


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
