"""Voice definitions: voiceconfig.json entries and voice.conf files turned into checked Voices."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Final

from idlakd.config import Config
from idlakd.models import ENGINES, GENDERS, Voice
from idlakd.worker.engines import EngineError, missing_files
from idlakd.worker.engines.piper import model_path as piper_model_path
from idlakd.worker.engines.piper import read_model as read_piper_model
from idlakd.worker.engines.tangle import read_voice_conf as tangle_voice_conf

log = logging.getLogger(__name__)

_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CODE_RE: Final = re.compile(r"^[A-Za-z0-9-]{1,16}$")


class VoiceDefinitionError(ValueError):
    """A voice definition is incomplete, malformed or points at files that are not usable."""


def read_voice_conf(directory: Path) -> dict[str, str]:
    """The key=value lines of <directory>/voice.conf (Idlak's voice description)."""
    try:
        return tangle_voice_conf(directory)
    except OSError as exc:
        raise VoiceDefinitionError(
            f"cannot read {directory / 'voice.conf'}: {exc.strerror}") from None


def confined_directory(raw: str, config: Config, base: Path | None = None) -> Path:
    """Resolve a voice directory, refusing one outside the configured voice roots."""
    path = Path(raw).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    resolved = path.resolve()
    roots = config.voice_root_paths
    if roots and not any(resolved == r or r in resolved.parents for r in roots):
        raise VoiceDefinitionError(
            f"directory {resolved} is outside the configured voice_roots")
    return resolved


def voice_from_entry(entry: Any, config: Config, base: Path | None = None) -> Voice:
    """A Voice from one voiceconfig.json entry (keys vid, name, gender, lang, acc, dir, engine...)."""
    if not isinstance(entry, dict):
        raise VoiceDefinitionError("entry is not a JSON object")
    vid = entry.get("vid")
    if not isinstance(vid, str) or not _ID_RE.match(vid):
        raise VoiceDefinitionError(f"'vid' {vid!r} must be 1-64 letters, digits, '.', '_' or '-'")
    engine = entry.get("engine", "tangle" if entry.get("dir") else "espeak")
    if engine not in ENGINES:
        raise VoiceDefinitionError(f"voice {vid}: engine {engine!r} is not one of {ENGINES}")
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise VoiceDefinitionError(f"voice {vid}: 'options' must be an object")
    directory = ""
    conf: dict[str, str] = {}
    if entry.get("dir"):
        if not isinstance(entry["dir"], str):
            raise VoiceDefinitionError(f"voice {vid}: 'dir' must be a string")
        resolved = confined_directory(entry["dir"], config, base)
        directory = str(resolved)
        if engine == "tangle" and (resolved / "voice.conf").is_file():
            conf = read_voice_conf(resolved)
    elif engine == "tangle":
        raise VoiceDefinitionError(f"voice {vid}: an Idlak (tangle) voice needs 'dir'")
    if engine == "piper":
        directory, options, conf = _piper_voice(vid, options, directory, config, base)
    reason = missing_files(engine, directory, options, config.idlak_root)
    if reason:
        raise VoiceDefinitionError(f"voice {vid}: {reason}")
    language = entry.get("lang") or conf.get("lng")
    accent = entry.get("acc") or conf.get("acc")
    gender = entry.get("gender")
    name = entry.get("name") or vid
    for key, value in (("lang", language), ("acc", accent)):
        if not isinstance(value, str) or not _CODE_RE.match(value):
            raise VoiceDefinitionError(
                f"voice {vid}: '{key}' missing or malformed (give it, or lng=/acc= in voice.conf)")
    if gender not in GENDERS:
        raise VoiceDefinitionError(f"voice {vid}: 'gender' must be male or female")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise VoiceDefinitionError(f"voice {vid}: 'name' must be 1-64 characters")
    rate = entry.get("sample_rate") or conf.get("srate")
    try:
        sample_rate = int(rate) if rate else None
    except ValueError:
        raise VoiceDefinitionError(f"voice {vid}: sample rate {rate!r} is not a number") from None
    assert isinstance(language, str) and isinstance(accent, str)
    return Voice(id=vid, name=name, language=language.lower(), accent=accent.lower(),
                 gender=gender, engine=engine, options=options, directory=directory,
                 sample_rate=sample_rate)


def _piper_voice(vid: str, options: dict[str, Any], directory: str, config: Config,
                 base: Path | None) -> tuple[str, dict[str, Any], dict[str, str]]:
    """A piper voice's directory and options, its model path made absolute, and its .onnx.json
    facts as the voice.conf keys lng, acc and srate."""
    try:
        model = options.get("model")
        if isinstance(model, str) and ("/" in model or model.endswith(".onnx")):
            path = piper_model_path(options, directory, base)
            options = {**options, "model": str(path)}
            if not directory:
                # The model's directory is the voice's data, the one its worker may read:
                # confined like any voice directory before anything in it is read.
                directory = str(confined_directory(str(path.parent), config))
        found = read_piper_model(options, directory, base)
    except EngineError as exc:
        raise VoiceDefinitionError(f"voice {vid}: {exc}") from None
    return directory, options, {"lng": found.language, "acc": found.accent,
                                "srate": str(found.sample_rate)}


def load_voice_config(path: Path, config: Config) -> list[Voice]:
    """Every usable voice of a voiceconfig.json; unusable entries are skipped with a warning
    (an entry with "optional": true, with an INFO line)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("Voice config %s not loaded: %s", path, exc)
        return []
    if isinstance(entries, dict):
        entries = entries.get("voices", [])
    if not isinstance(entries, list):
        log.warning("Voice config %s not loaded: expected a list of voices", path)
        return []
    voices: list[Voice] = []
    for number, entry in enumerate(entries):
        try:
            voices.append(voice_from_entry(entry, config, base=path.parent))
        except VoiceDefinitionError as exc:
            # An optional entry (the piper voice of the default list) needs an extra that
            # may not be installed: without it, nothing is wrong.
            optional = isinstance(entry, dict) and entry.get("optional") is True
            log.log(logging.INFO if optional else logging.WARNING,
                    "Voice config %s entry %d skipped%s: %s", path, number + 1,
                    " (optional)" if optional else "", exc)
    return voices
