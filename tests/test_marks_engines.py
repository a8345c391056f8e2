"""Marks for every engine, at the Synthesizer: sentences always (exact), words where the engine reports them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idlakd.models import Voice
from idlakd.synth.options import MARK_TYPES, SpeechOptions
from idlakd.synth.synthesizer import Synthesizer
from tests.helpers.app import make_config
from tests.helpers.synth import STANDIN_ROOT, make_standin_voice

TEXT = "One. Two more words. Three is the last sentence here."
ALL = SpeechOptions(stream=False, marks=frozenset(MARK_TYPES))


async def _speak(synth: Synthesizer, voice: Voice, text: str,
                 options: SpeechOptions = ALL) -> tuple[list[dict[str, Any]], float]:
    """Synthesise as a complete WAV: (marks, audio ms)."""
    audio = await synth.synthesise(voice, text, "wav", options)
    try:
        marks = []
        async for _data in audio:
            marks += [m.wire() for m in audio.take_marks()]
        marks += [m.wire() for m in audio.take_marks()]
        assert audio.audio_seconds is not None
        return marks, audio.audio_seconds * 1000
    finally:
        await audio.aclose()


async def test_sentence_marks_without_word_marks_for_idlak(tmp_path: Path) -> None:
    """A stand-in Idlak voice reports no words: its sentence marks fall where each chunk's audio starts."""
    directory = make_standin_voice(tmp_path / "voice", spk="tst", srate=16000)
    voice = Voice("tst", "tst", "en", "ga", "female", engine="tangle", directory=str(directory))
    synth = Synthesizer(make_config(tmp_path, idlak_root=str(STANDIN_ROOT)))
    await synth.start()
    try:
        marks, total = await _speak(synth, voice, TEXT)
        assert {m["type"] for m in marks} == {"sentence"}
        assert [m["value"] for m in marks] == ["One.", "Two more words.",
                                                "Three is the last sentence here."]
        times = [m["time"] for m in marks]
        assert times[0] == 0 and times == sorted(times) and times[-1] < total
        # Each sentence starts exactly where the audio before it ends.
        _, one = await _speak(synth, voice, "One.")
        assert abs(times[1] - one) <= 1
    finally:
        await synth.close()


async def test_espeak_reports_words_and_marks_skip_the_cache(tmp_path: Path) -> None:
    """eSpeak adds word marks; a cached answer (no marks) never serves a request for marks."""
    voice = Voice("en", "English", "en", "gb", "male", engine="espeak")
    synth = Synthesizer(make_config(tmp_path, cache_max_bytes=str(10 * 2**20)))
    await synth.start()
    try:
        plain, _ = await _speak(synth, voice, TEXT, SpeechOptions(stream=False))
        assert plain == []
        for _ in range(2):
            marks, _total = await _speak(synth, voice, TEXT)
            assert [m["value"] for m in marks if m["type"] == "word"] == TEXT.split()
    finally:
        await synth.close()
