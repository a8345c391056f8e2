"""Timing marks and captions from the outside: /speech/marks, /speech/captions, SSML's marks and prosody."""

from __future__ import annotations

import array
import json
import math
import re
import struct
from typing import Any

from aiohttp.test_utils import TestClient

from tests.helpers.app import assert_error, bearer

TEXT = "Hello there, world. The quick brown fox jumps over the lazy dog! Is it done?"
# RMS under this is silence: eSpeak's pauses are exact zeros or nearly (a stop consonant's
# closure, quiet but not silent, measured 166).
SILENCE_RMS = 50


async def _marks(client: TestClient[Any, Any], token: str, text: str,
                 **fields: Any) -> list[dict[str, Any]]:
    """POST /speech/marks; its lines parsed."""
    resp = await client.post("/speech/marks", headers=bearer(token),
                             json={"voice_id": "alba", "text": text, **fields})
    body = await resp.text()
    assert resp.status == 200, body
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert body.endswith("\n")
    return [json.loads(line) for line in body.splitlines()]


async def _wav(client: TestClient[Any, Any], token: str, text: str) -> tuple[int, array.array[int]]:
    """POST /speech for a complete WAV: (rate, samples)."""
    resp = await client.post("/speech", headers=bearer(token),
                             json={"voice_id": "alba", "text": text, "stream": False})
    assert resp.status == 200
    data = await resp.read()
    rate = struct.unpack_from("<I", data, 24)[0]
    start = data.index(b"data") + 8
    return rate, array.array("h", data[start:])


def _rms(samples: array.array[int]) -> float:
    """Root mean square of some samples (0 for none)."""
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


async def test_word_marks_are_monotonic_inside_the_audio_and_audible(
        client: TestClient[Any, Any], user_token: str) -> None:
    """Each word mark points at its word in the text, in order, where that word's sound is."""
    marks = await _marks(client, user_token, TEXT)
    rate, samples = await _wav(client, user_token, TEXT)
    duration_ms = len(samples) * 1000 / rate
    words = [m for m in marks if m["type"] == "word"]
    assert [m["value"] for m in words] == TEXT.split()
    assert all(TEXT[m["start"]:m["end"]] == m["value"] for m in marks)
    times = [m["time"] for m in words]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert 0 <= times[0] and times[-1] < duration_ms
    for mark in words:
        at = mark["time"] * rate // 1000
        after = samples[at:at + rate // 20]  # the 50 ms after the mark
        assert _rms(after) > SILENCE_RMS, (mark, _rms(after))


async def test_sentence_marks_start_each_sentence(client: TestClient[Any, Any],
                                                  user_token: str) -> None:
    """One sentence mark per sentence, at the time of its first word."""
    marks = await _marks(client, user_token, TEXT)
    sentences = [m for m in marks if m["type"] == "sentence"]
    assert [m["value"] for m in sentences] == [
        "Hello there, world.", "The quick brown fox jumps over the lazy dog!", "Is it done?"]
    firsts = {m["start"]: m["time"] for m in marks if m["type"] == "word"}
    for sentence in sentences:
        assert firsts[sentence["start"]] - sentence["time"] < 150


async def test_offsets_are_characters_not_bytes(client: TestClient[Any, Any],
                                                user_token: str) -> None:
    """Offsets count Unicode characters: non-ASCII words still slice out of the text."""
    text = "Ça va très bien, Zoë? Naïve façade."
    marks = await _marks(client, user_token, text, speech_mark_types=["word"])
    assert {m["type"] for m in marks} == {"word"}
    assert [text[m["start"]:m["end"]] for m in marks] == [m["value"] for m in marks]
    assert [m["value"] for m in marks] == text.split()


async def test_ssml_marks_and_offsets_into_the_markup(client: TestClient[Any, Any],
                                                      user_token: str) -> None:
    """<mark>s are reported by name at their place in time; offsets point into the markup sent."""
    text = ('<speak>First words <mark name="middle"/> more words. <break time="800ms"/>'
            '<mark name="after-break"/>Last one.</speak>')
    marks = await _marks(client, user_token, text)
    ssml = [m for m in marks if m["type"] == "ssml"]
    assert [m["value"] for m in ssml] == ["middle", "after-break"]
    assert text[ssml[0]["start"]:ssml[0]["end"]] == '<mark name="middle"/>'
    words = {m["value"]: m["time"] for m in marks if m["type"] == "word"}
    assert words["words"] <= ssml[0]["time"] <= words["more"]
    # The break's 800 ms lie between "words." and the mark after it.
    assert ssml[1]["time"] - words["words."] >= 800
    assert ssml[1]["time"] <= words["Last"]
    assert all(text[m["start"]:m["end"]] == m["value"] for m in marks if m["type"] == "word")


async def test_mark_types_choose_what_is_reported(client: TestClient[Any, Any],
                                                  user_token: str) -> None:
    """speech_mark_types filters; a bad list is a 422 naming the field."""
    marks = await _marks(client, user_token, TEXT, speech_mark_types=["sentence"])
    assert [m["type"] for m in marks] == ["sentence"] * 3
    for bad in ([], ["viseme"], "word", [1]):
        resp = await client.post("/speech/marks", headers=bearer(user_token),
                                 json={"voice_id": "alba", "text": TEXT, "speech_mark_types": bad})
        await assert_error(resp, 422, "speech_mark_types: Must be a non-empty list of "
                                      "sentence|word|ssml.")


async def test_marks_need_a_user_and_a_known_voice(client: TestClient[Any, Any],
                                                   user_token: str) -> None:
    """The same door checks as /speech."""
    resp = await client.post("/speech/marks", json={"voice_id": "alba", "text": TEXT})
    assert resp.status == 401
    resp = await client.post("/speech/captions", headers=bearer(user_token),
                             json={"voice_id": "nobody", "text": TEXT})
    await assert_error(resp, 400, "Voice could not be found")


async def test_captions_follow_the_speech(client: TestClient[Any, Any], user_token: str) -> None:
    """WebVTT: cues in order, short lines, every word once, the last cue ends with the audio."""
    text = ("Captions are made from word marks. This second sentence is rather longer than "
            "one caption line can hold, so it is wrapped and split into several cues in order.")
    resp = await client.post("/speech/captions", headers=bearer(user_token),
                             json={"voice_id": "alba", "text": text})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/vtt; charset=utf-8"
    vtt = await resp.text()
    assert vtt.startswith("WEBVTT\n\n")
    cues = re.findall(r"(\d+)\n(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n(.*?)\n(?:\n|$)",
                      vtt, re.DOTALL)
    assert len(cues) >= 3

    def ms(stamp: str) -> int:
        hours, minutes, seconds = stamp.split(":")
        return round((int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1000)

    starts = [ms(start) for _n, start, _end, _text in cues]
    assert starts == sorted(starts) and starts[0] < 200
    for (_n, _start, end, _text), following in zip(cues, starts[1:]):
        assert ms(end) == following
    assert all(len(line) <= 42 for *_rest, cue in cues for line in cue.split("\n"))
    assert " ".join(cue.replace("\n", " ") for *_rest, cue in cues) == text
    # The second sentence starts a cue of its own.
    assert any(cue.startswith("This second") for *_rest, cue in cues)
    rate, samples = await _wav(client, user_token, text)
    assert abs(ms(cues[-1][2]) - len(samples) * 1000 / rate) < 50


async def test_ssml_prosody_changes_how_espeak_speaks(client: TestClient[Any, Any],
                                                      user_token: str) -> None:
    """<prosody rate> shortens the audio; <prosody volume> raises its level (eSpeak's own controls)."""
    sentence = "This sentence is spoken at several different speeds and levels."
    _rate, plain = await _wav(client, user_token, f"<speak>{sentence}</speak>")
    _rate, fast = await _wav(client, user_token,
                             f'<speak><prosody rate="200%">{sentence}</prosody></speak>')
    _rate, loud = await _wav(client, user_token,
                             f'<speak><prosody volume="+6dB">{sentence}</prosody></speak>')
    _rate, soft = await _wav(client, user_token,
                             f'<speak><prosody volume="-12dB">{sentence}</prosody></speak>')
    assert len(fast) < 0.65 * len(plain)
    assert 20 * math.log10(_rms(loud) / _rms(plain)) > 3
    assert 20 * math.log10(_rms(soft) / _rms(plain)) < -9


async def test_text_type_text_reads_markup_as_words(client: TestClient[Any, Any],
                                                    user_token: str) -> None:
    """text_type "text": a text starting with "<" is words; "ssml" without markup is a 422."""
    text = "<speak>Hi</speak>"
    marks = await _marks(client, user_token, text, text_type="text", speech_mark_types=["word"])
    assert [m["value"] for m in marks] == [text]
    marks = await _marks(client, user_token, text, speech_mark_types=["word"])
    assert [m["value"] for m in marks] == ["Hi"]
    resp = await client.post("/speech", headers=bearer(user_token),
                             json={"voice_id": "alba", "text": "Hi", "text_type": "ssml"})
    await assert_error(resp, 422, "text: text_type 'ssml' needs markup: the text must start "
                                  "with <speak>.")


async def test_say_as_is_spoken_as_words_and_marked_once(client: TestClient[Any, Any],
                                                         user_token: str) -> None:
    """A say-as date becomes words for the engine, and one word mark pointing at the written date."""
    text = ('<speak xml:lang="en-US">Due <say-as interpret-as="date" format="mdy">'
            '3/5/2024</say-as> at <say-as interpret-as="cardinal">1,250</say-as>.</speak>')
    marks = await _marks(client, user_token, text, speech_mark_types=["word"])
    assert [m["value"] for m in marks] == ["Due", "3/5/2024", "at", "1,250"]
    plain_rate, said = await _wav(client, user_token, "Due March fifth, twenty twenty-four at "
                                                      "one thousand two hundred and fifty.")
    _rate, marked = await _wav(client, user_token, text)
    # The same words, so about the same length (eSpeak's pauses at element edges differ).
    assert abs(len(marked) - len(said)) < 0.15 * len(said)
    resp = await client.post("/speech", headers=bearer(user_token), json={
        "voice_id": "alba",
        "text": '<speak><say-as interpret-as="date" format="dmy">31/02/2024</say-as></speak>'})
    await assert_error(resp, 422, contains="interpret-as 'date'")


async def test_inline_markup_keeps_a_sentence_whole(client: TestClient[Any, Any],
                                                    user_token: str) -> None:
    """<emphasis>, <prosody> and <mark> inside a sentence do not cut it: one sentence mark,
    every word marked, and the words come about as fast as in the plain sentence."""
    plain = "A really big dog lives here."
    markup = ('<speak>A <emphasis level="none">really</emphasis> big <mark name="m"/>'
              '<prosody rate="medium">dog</prosody> lives here.</speak>')
    marks = await _marks(client, user_token, markup)
    assert [m["value"] for m in marks if m["type"] == "sentence"] == [
        'A <emphasis level="none">really</emphasis> big <mark name="m"/>'
        '<prosody rate="medium">dog</prosody> lives here.']
    assert [m["value"] for m in marks if m["type"] == "word"] == plain.split()
    words = [m["time"] for m in marks if m["type"] == "word"]
    plain_words = [m["time"] for m in await _marks(client, user_token, plain) if m["type"] == "word"]
    # Cut into five sentences (as it used to be), the last word came about 3 times later.
    assert words[-1] < 1.5 * plain_words[-1]
