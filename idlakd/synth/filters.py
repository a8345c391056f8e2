"""Speed, pitch and volume as an ffmpeg filter chain, for what the engine did not do itself."""

from __future__ import annotations

from typing import Final

from idlakd.synth.options import SpeechOptions

#: The prosody an engine may apply natively (then left out of the chain).
PROSODY: Final = frozenset({"speed", "pitch", "volume"})
# atempo's smallest factor; slower speeds are split into equal factors it takes.
_ATEMPO_MIN: Final = 0.5


def _tempo(speed: float) -> list[str]:
    """atempo filters whose product is speed (tempo changes, pitch does not)."""
    factors = [speed]
    while factors[0] < _ATEMPO_MIN:
        root = factors[0] ** 0.5
        factors = [root] * (len(factors) * 2)
    return [f"atempo={factor:.6g}" for factor in factors]


def prosody_filters(options: SpeechOptions, native: frozenset[str] = frozenset()) -> list[str]:
    """The ffmpeg audio filters for options' speed, pitch and volume, leaving out those in native."""
    chain: list[str] = []
    if "speed" not in native and options.speed != 1.0:
        chain += _tempo(options.speed)
    if "pitch" not in native and options.pitch != 0.0:
        # Rubber Band shifts pitch and keeps the tempo (and so the timing of marks).
        chain.append(f"rubberband=pitch={2 ** (options.pitch / 12):.6g}")
    if "volume" not in native and options.volume != 0.0:
        chain.append(f"volume={options.volume:g}dB")
    return chain
