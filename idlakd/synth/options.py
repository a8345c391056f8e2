"""SpeechOptions: how a door wants its audio (streaming, rate, prosody, kind of text, marks), and their bounds."""

from __future__ import annotations

import dataclasses
from typing import Final

#: Speaking rate as a factor of the voice's own (2.0: twice as fast).
SPEED_RANGE: Final = (0.25, 4.0)
#: Pitch shift in semitones.
PITCH_RANGE: Final = (-12.0, 12.0)
#: Volume change in decibels.
VOLUME_RANGE: Final = (-30.0, 12.0)
#: Output sample rates a client may ask for (Opus narrows them further).
SAMPLE_RATE_RANGE: Final = (8000, 48000)
#: "auto": markup when the text starts like an XML document; "text": always plain
#: (a "<" is a character); "ssml": always markup.
TEXT_TYPES: Final = ("auto", "text", "ssml")
#: Kinds of timing mark: chunk (sentence) starts, words the engine reports, SSML <mark>s.
MARK_TYPES: Final = ("sentence", "word", "ssml")


@dataclasses.dataclass(frozen=True)
class SpeechOptions:
    """How a door wants its audio; every field's default is the seed's behaviour."""

    #: True: bytes as they are made (length unknown). False: a complete file of known length.
    stream: bool = True
    #: Output samples per second; None: the format's own (8000 for mulaw/alaw) or the voice's.
    sample_rate: int | None = None
    #: Speaking rate factor (SPEED_RANGE).
    speed: float = 1.0
    #: Pitch shift in semitones (PITCH_RANGE).
    pitch: float = 0.0
    #: Volume change in dB (VOLUME_RANGE).
    volume: float = 0.0
    #: How the text is read (TEXT_TYPES).
    text_type: str = "auto"
    #: The mark types the consumer wants (MARK_TYPES); empty: no marks are collected.
    marks: frozenset[str] = frozenset()

    @property
    def prosody_changed(self) -> bool:
        """Whether speed, pitch or volume differ from the voice's own."""
        return (self.speed, self.pitch, self.volume) != (1.0, 0.0, 0.0)
