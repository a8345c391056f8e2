"""The audio formats served: one table of content type, ffmpeg encoder and muxer, and rate rules."""

from __future__ import annotations

import dataclasses
from typing import Final, Mapping

#: Every rate MPEG audio (mp3) and AAC (ADTS) can carry.
_MPEG_RATES: Final = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
#: The only rates Opus encodes.
OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)
#: G.711 is telephone audio: 8 kHz unless a rate is asked.
_TELEPHONE_RATE: Final = 8000
# Ogg pages of at most 100 ms (the muxer's default is 1 s): the tail of a sentence is not
# held back until the next sentence is made, at about 3 kbit/s of page headers.
_OPUS_PAGE_MICROSECONDS: Final = "100000"
# WebM clusters of at most 100 ms, written live (no seeking back to patch sizes and cues),
# so a Media Source player gets data as it is made.
_WEBM_CLUSTER_MILLISECONDS: Final = "100"
# 20 ms Opus frames (libopus' default, stated: the page and cluster bounds assume it); speech at
# 32 kbit/s is near transparent.
_OPUS_CODEC: Final = ("-c:a", "libopus", "-b:a", "32k", "-frame_duration", "20",
                      "-application", "audio")


@dataclasses.dataclass(frozen=True)
class AudioFormat:
    """One output format: what it is called and sent as, how ffmpeg makes it, which rates it takes."""

    name: str
    #: The Content-Type; "{rate}" is replaced by the output rate.
    content_type: str
    #: ffmpeg output arguments (codec and muxer); () for PCM made without ffmpeg.
    codec_args: tuple[str, ...]
    #: The output rate when none is asked; None: the voice's own.
    default_rate: int | None = None
    #: The rates the codec carries; empty: any rate in SAMPLE_RATE_RANGE.
    rates: tuple[int, ...] = ()
    #: True: an asked rate outside rates is refused; False: it moves to the nearest one above.
    strict_rates: bool = False
    #: Bare samples, no container: nothing in the bytes tells a player the rate or the codec.
    raw: bool = False

    @property
    def needs_ffmpeg(self) -> bool:
        """Whether every answer in this format goes through ffmpeg (else only resampled or filtered ones)."""
        return bool(self.codec_args)

    def content_type_at(self, rate: int) -> str:
        """The Content-Type of an answer at rate."""
        return self.content_type.replace("{rate}", str(rate))

    @property
    def rate_in_content_type(self) -> bool:
        """Whether the Content-Type names the rate (raw PCM: nothing else tells it)."""
        return "{rate}" in self.content_type

    def refused_rate(self, asked: int) -> str | None:
        """Why an asked sample_rate cannot be served in this format (a field error's reason), or None."""
        if self.strict_rates and asked not in self.rates:
            allowed = "|".join(str(rate) for rate in self.rates)
            return f"Not a rate {self.name} allows. Valid choices: {allowed}"
        return None

    def output_rate(self, voice_rate: int, asked: int | None) -> int:
        """The rate served: the asked one, else the format's or the voice's, moved onto an allowed rate."""
        rate = asked or self.default_rate or voice_rate
        if self.rates and rate not in self.rates:
            # The nearest allowed rate above (or the highest): no band of the voice is lost.
            rate = next((r for r in self.rates if r >= rate), self.rates[-1])
        return rate


_TABLE: Final = (
    AudioFormat("wav", "audio/wav", ()),
    AudioFormat("ogg", "audio/ogg", ("-c:a", "libvorbis", "-q:a", "4", "-f", "ogg")),
    AudioFormat("mp3", "audio/mpeg", ("-c:a", "libmp3lame", "-q:a", "4", "-f", "mp3"),
                rates=_MPEG_RATES),
    AudioFormat("opus", "audio/ogg; codecs=opus",
                (*_OPUS_CODEC, "-f", "ogg", "-page_duration", _OPUS_PAGE_MICROSECONDS),
                rates=OPUS_RATES, strict_rates=True),
    AudioFormat("webm", "audio/webm; codecs=opus",
                (*_OPUS_CODEC, "-f", "webm", "-live", "1",
                 "-cluster_time_limit", _WEBM_CLUSTER_MILLISECONDS),
                rates=OPUS_RATES, strict_rates=True),
    AudioFormat("flac", "audio/flac", ("-c:a", "flac", "-f", "flac")),
    AudioFormat("aac", "audio/aac", ("-c:a", "aac", "-b:a", "64k", "-f", "adts"),
                rates=_MPEG_RATES),
    AudioFormat("pcm", "audio/L16; rate={rate}; channels=1", (), raw=True),
    AudioFormat("mulaw", "audio/PCMU", ("-c:a", "pcm_mulaw", "-f", "mulaw"),
                default_rate=_TELEPHONE_RATE, raw=True),
    AudioFormat("alaw", "audio/PCMA", ("-c:a", "pcm_alaw", "-f", "alaw"),
                default_rate=_TELEPHONE_RATE, raw=True),
)

#: Every format by name, in the order documented.
AUDIO_FORMATS: Final[Mapping[str, AudioFormat]] = {f.name: f for f in _TABLE}
#: The names a client may ask for.
FORMAT_NAMES: Final = tuple(AUDIO_FORMATS)
#: The formats a browser's <audio> can play (a container says what is inside).
PLAYABLE_FORMATS: Final = tuple(f.name for f in _TABLE if not f.raw)


def audio_format(name: str) -> AudioFormat:
    """The format called name; KeyError if there is none."""
    return AUDIO_FORMATS[name]
