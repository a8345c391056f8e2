"""The document model: sentences, bounded chunks that never cut a word, cleaned text, bounded markup."""

from __future__ import annotations

import math
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idlakd.synth.document import (MAX_BREAK_SECONDS, Break, Chunk, Document, DocumentError,
                                   Marker, Prosody, Text, clean, is_markup, parse)
from idlakd.synth.text import MAX_CHUNK_CHARS, split_sentences


def split_text(text: str, max_chars: int = MAX_CHUNK_CHARS) -> list[Chunk]:
    """The chunks of a text, as the daemon sends them to workers."""
    return list(parse(text, max_chunk_chars=max_chars).chunks)


def test_sentences_split_at_terminal_punctuation() -> None:
    """., ! and ? followed by space end a sentence; whitespace is normalised."""
    assert split_sentences("Hello there.  How are you?\nFine!") == [
        "Hello there.", "How are you?", "Fine!"]


def test_abbreviations_and_initials_do_not_end_a_sentence() -> None:
    """'Dr. Smith' and 'J. R. R. Tolkien' stay whole; decimals are not sentence ends."""
    assert split_sentences("Dr. Smith met J. R. R. Tolkien. Pi is 3.14 roughly.") == [
        "Dr. Smith met J. R. R. Tolkien.", "Pi is 3.14 roughly."]


def test_closing_quotes_stay_with_their_sentence() -> None:
    """A quote after the full stop belongs to the sentence it closes."""
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]


def test_blank_line_is_a_sentence_break() -> None:
    """A paragraph break ends a sentence even without punctuation."""
    assert split_sentences("A title\n\nThe body") == ["A title", "The body"]


def test_punctuation_only_pieces_join_the_previous_sentence() -> None:
    """Stray '...' is not sent to a worker on its own."""
    assert split_sentences("Wait. ... What?") == ["Wait. ...", "What?"]


def test_long_sentence_cut_at_comma_then_space() -> None:
    """Over the bound: cut after a comma if one is late enough, else at a space."""
    text = "one two three, four five six seven eight nine ten"
    chunks = [c.text for c in split_text(text, max_chars=20)]
    assert chunks[0] == "one two three,"
    assert all(len(c) <= 20 for c in chunks)
    assert " ".join(chunks) == text


def test_word_longer_than_bound_is_hard_cut() -> None:
    """Only a single word longer than the bound is cut inside."""
    chunks = [c.text for c in split_text("ab " + "x" * 25 + " cd", max_chars=10)]
    assert chunks == ["ab", "x" * 10, "x" * 10, "x" * 5 + " cd"]


def test_blank_text_is_refused() -> None:
    """Nothing to say is a ValueError (422 upstream)."""
    with pytest.raises(ValueError):
        split_text("  \n\t ")


def test_markup_becomes_sentences_and_breaks() -> None:
    """An SSML document is read by the daemon: its sentences are chunks, its breaks silence."""
    doc = ('<speak xmlns="http://www.w3.org/2001/10/synthesis"><s>Hello.</s> '
           '<s>World <break time="500ms"/> again.</s><break strength="strong"/>'
           '<p>Go <sub alias="World Wide Web">WWW</sub>.</p></speak>')
    assert split_text("  " + doc + "\n") == [
        Chunk((Text("Hello."),)),
        # A break inside a sentence stays inside its chunk: the sentence is said as one.
        Chunk((Text("World"), Break(500), Text("again."), Break(750))),
        Chunk((Text("Go World Wide Web ."),)),
    ]


def test_idlak_markup_is_read_too() -> None:
    """Idlak's own XML (doc, parl, spurt, break with seconds) gives text runs and breaks."""
    doc = '<doc><parl><spurt>First part.</spurt><break time="1.5"/><spurt>Second.</spurt></parl></doc>'
    assert split_text(doc) == [Chunk((Text("First part."), Break(1500))), Chunk((Text("Second."),))]


def test_plain_text_loses_control_characters_and_is_nfc() -> None:
    """C0/C1 controls (eSpeak's embedded-command marker U+0001 among them) are removed; NFC."""
    assert split_text("\x01" "0A ok\x85 fine\x9b\x00. Cafe\u0301.") == [
        Chunk((Text("0A ok fine."),)), Chunk((Text("Caf\u00e9."),))]


@pytest.mark.parametrize("text,needle", [
    ('<speak><audio src="/etc/passwd"/></speak>', "<audio> is not allowed"),
    ('<speak xml:base="' + "a" * 150 + '"><s>x</s></speak>', "attribute 'xml:base'"),
    ('<speak><s src="x">hi</s></speak>', "attribute 'src'"),
    ('<speak><voice name="en">hi</voice></speak>', "<voice> is not allowed"),
    ('<speak><x:y xmlns:x="urn:evil">t</x:y></speak>', "namespace 'urn:evil'"),
    ('<speak><break time="8000s"/>hi</speak>', "longer than 10 s"),
    ('<speak><break time="soon"/>hi</speak>', "not a duration"),
    ('<speak><break strength="huge"/>hi</speak>', "strength 'huge'"),
    ("<speak>" + "<s>" * 40 + "deep" + "</s>" * 40 + "</speak>", "nested deeper"),
    ('<speak>\n\n<s>ok</s><audio/></speak>', "line 3"),
])
def test_markup_outside_the_allowlist_is_refused_by_name(text: str, needle: str) -> None:
    """Elements, attributes, namespaces and values outside the allowlist: an error naming them."""
    with pytest.raises(DocumentError, match=needle):
        parse(text)


def test_breaks_are_bounded_by_their_share_of_the_audio() -> None:
    """One 10 s break is fine; a text made mostly of breaks is refused."""
    one = parse('<speak>Hello <break time="10s"/> world.</speak>')
    assert one.break_seconds == MAX_BREAK_SECONDS
    many = "<speak>" + '<break time="10s"/>hi ' * 20 + "</speak>"
    with pytest.raises(DocumentError, match="breaks add up to 200 s"):
        parse(many)
    # With a share of 1 only the per-break bound holds.
    assert parse(many, max_break_share=1.0).break_seconds == 200


def test_audio_estimate_errs_short() -> None:
    """The 413 estimate counts fast speech plus breaks: never more than the text could take."""
    document = parse("word " * 1000 + '<break time="1s"/>'.join([""]))
    assert isinstance(document, Document)
    assert 100 <= document.min_audio_seconds() <= 400


def test_less_than_in_plain_text_is_not_markup() -> None:
    """'<3' or '< 5' is text, not a document."""
    assert not is_markup("<3 you")
    assert not is_markup("< 5 items")
    assert split_text("<3 you.") == [Chunk((Text("<3 you."),))]


@pytest.mark.parametrize("text", [
    "<speak>unclosed",
    "<speak><s></speak>",
    "<speak>&undefined;</speak>",
])
def test_malformed_markup_is_refused(text: str) -> None:
    """Markup that does not parse is a ValueError."""
    with pytest.raises(DocumentError, match="not well-formed"):
        split_text(text)


@pytest.mark.parametrize("text", [
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
    "<speak>&lol2;</speak>",
    '<!DOCTYPE speak SYSTEM "file:///etc/passwd"><speak/>',
    '<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>',
])
def test_doctype_and_entity_declarations_are_refused(text: str) -> None:
    """Billion laughs and external entities: refused as soon as the parser meets the DTD."""
    with pytest.raises(DocumentError, match="DOCTYPE or ENTITY"):
        split_text(text)


@pytest.mark.parametrize("text", ['<speak><!-- x --><!doctype x></speak>', '<!ENTITY x "y"><speak/>'])
def test_stray_declarations_are_not_well_formed(text: str) -> None:
    """A declaration where XML allows none is a parse error, never read."""
    with pytest.raises(DocumentError):
        split_text(text)


words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Z", "Cc", "M")),
                min_size=1, max_size=40)
separators = st.sampled_from([" ", "  ", ", ", ". ", "! ", "? ", "\n", "\n\n", "; "])


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(words, separators), min_size=1, max_size=60),
       st.integers(min_value=5, max_value=MAX_CHUNK_CHARS))
def test_chunks_are_bounded_lose_nothing_and_keep_words(
        parts: list[tuple[str, str]], bound: int) -> None:
    """Every chunk fits the bound, the words come back in order, short words are never cut."""
    # The model speaks NFC text; compare with that.
    text = unicodedata.normalize("NFC", "".join(word + sep for word, sep in parts))
    if is_markup(text):
        return
    if not text.split():
        return
    chunks = split_text(text, max_chars=bound)
    assert all(0 < len(c.text) <= bound for c in chunks)
    assert "".join("".join(c.text.split()) for c in chunks) == "".join(text.split())
    pieces = [token for c in chunks for token in c.text.split()]
    for token in text.split():
        if len(token) <= bound:
            assert token in pieces


def _texts(document: Document) -> list[Text]:
    """Every text segment of a document, in order."""
    return [s for c in document.chunks for s in c.segments if isinstance(s, Text)]


def test_prosody_nests_and_reaches_the_segments() -> None:
    """Rates multiply, semitones and decibels add; text outside keeps the voice's own (None)."""
    document = parse('<speak>Plain. <prosody rate="150%" pitch="+2st" volume="loud">Outer '
                     '<prosody rate="x-slow" pitch="-10%" volume="-3dB">inner</prosody> '
                     'again.</prosody> <emphasis level="strong">Loud.</emphasis></speak>')
    by_text = {t.text: t.prosody for t in _texts(document)}
    assert by_text["Plain."] is None
    assert by_text["Outer"] == Prosody(1.5, 2.0, 6.0)
    inner = by_text["inner"]
    assert inner is not None and inner.rate == 0.75 and inner.volume == 3.0
    assert abs(inner.pitch - (2 + 12 * math.log2(0.9))) < 1e-9
    assert by_text["again."] == Prosody(1.5, 2.0, 6.0)
    assert by_text["Loud."] == Prosody(0.9, 1.0, 4.0)


@pytest.mark.parametrize(("markup", "needle"), [
    ('<prosody rate="fastest">x</prosody>', "<prosody>: rate 'fastest' is not one of"),
    ('<prosody rate="900%">x</prosody>', "<prosody>: rate '900%' is outside"),
    ('<prosody pitch="+200Hz">x</prosody>', "<prosody>: pitch '+200Hz' is not one of"),
    ('<prosody pitch="+13st">x</prosody>', "<prosody>: pitch '+13st' is outside"),
    ('<prosody volume="+20dB">x</prosody>', "<prosody>: volume '+20dB' is outside"),
    ('<emphasis level="huge">x</emphasis>', "<emphasis>: level 'huge' is not one of"),
    ('<mark/>x', "<mark> needs a name"),
    ('<say-as>12</say-as>', "<say-as> needs interpret-as"),
    ('<say-as interpret-as="cardinal"><p>12</p></say-as>', "<say-as> must contain text only"),
])
def test_bad_ssml_values_are_refused_by_element_and_line(markup: str, needle: str) -> None:
    """A value the server cannot say is a DocumentError naming the element, the value and the line."""
    with pytest.raises(DocumentError) as caught:
        parse(f"<speak>\nHello.\n{markup}</speak>")
    assert needle in str(caught.value) and "(line 3)" in str(caught.value)


def test_words_keep_their_character_offsets() -> None:
    """Every word of every chunk knows the characters it came from, through cleaning and markup."""
    text = "  Caf\u0065\u0301 \x01au lait,\n\nvoil\u00e0 tout. " + "long " * 80
    for chunk in parse(text, max_chunk_chars=40).chunks:
        for segment in chunk.segments:
            assert isinstance(segment, Text) and len(segment.spans) == len(segment.text.split())
            for word, (start, end) in zip(segment.text.split(), segment.spans):
                assert clean(text[start:end]) == word
    markup = '<speak>One <sub alias="two">2</sub> <mark name="m"/>three &amp; four.</speak>'
    document = parse(markup)
    spans = [span for t in _texts(document) for span in t.spans]
    # An entity's one character points at the start of the reference.
    assert [markup[s:e] for s, e in spans][-3:] == ["three", "&", "four."]
    marker = next(s for c in document.chunks for s in c.segments if isinstance(s, Marker))
    assert markup[marker.start:marker.end] == '<mark name="m"/>'
    assert markup[spans[0][0]:spans[0][1]] == "One"


def test_pieces_of_a_long_word_point_at_their_own_characters() -> None:
    """A word longer than a chunk is cut; each piece's span is its own part of the text."""
    text = "x" * 25 + " end."
    spans = [span for chunk in parse(text, max_chunk_chars=10).chunks
             for segment in chunk.segments if isinstance(segment, Text) for span in segment.spans]
    assert spans[:3] == [(0, 10), (10, 20), (20, 25)]


def test_a_byte_order_mark_before_markup_is_markup() -> None:
    """A BOM (as some editors save) before <speak> does not make the markup plain text."""
    text = "\ufeff <speak>Hi <break time=\"1s\"/>there.</speak>"
    document = parse(text)
    assert document.break_seconds == 1.0
    assert [text[s:e] for t in _texts(document) for s, e in t.spans] == ["Hi", "there."]
