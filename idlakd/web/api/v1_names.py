"""The names OpenAI's door accepts: model names and voice aliases, read from the settings."""

from __future__ import annotations

import functools

from idlakd.config import Config
from idlakd.models import Voice
from idlakd.store.factory import Store


@functools.lru_cache(maxsize=8)
def _split(setting: str) -> tuple[str, ...]:
    """The non-empty, stripped items of a comma-separated setting."""
    return tuple(item.strip() for item in setting.split(",") if item.strip())


def models(config: Config) -> tuple[str, ...]:
    """The model names /v1/audio/speech accepts (openai_models), in configured order."""
    return _split(config.openai_models)


def voice_aliases(config: Config) -> dict[str, str]:
    """Alias -> voice id (openai_voices, "name=voice_id,..."); an item without "=" is ignored."""
    aliases: dict[str, str] = {}
    for item in _split(config.openai_voices):
        name, sep, voice_id = item.partition("=")
        if sep and name.strip() and voice_id.strip():
            aliases[name.strip()] = voice_id.strip()
    return aliases


async def find_voice(store: Store, config: Config, name: str) -> Voice | None:
    """The voice a voice id (first) or an alias names; None if neither."""
    voice = await store.get_voice(name)
    alias = voice_aliases(config).get(name)
    if voice is None and alias is not None:
        voice = await store.get_voice(alias)
    return voice
