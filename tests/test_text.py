"""Text splitting: sentences, bounded chunks that never cut a word, and safe markup."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idlakd.synth.text import MAX_CHUNK_CHARS, Chunk, is_markup, split_sentences, split_text


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


def test_markup_is_sent_whole() -> None:
    """An XML document is one chunk flagged as markup."""
    doc = "<speak><s>Hello.</s> <s>World.</s></speak>"
    assert split_text("  " + doc + "\n") == [Chunk(doc, markup=True)]


def test_less_than_in_plain_text_is_not_markup() -> None:
    """'<3' or '< 5' is text, not a document."""
    assert not is_markup("<3 you")
    assert not is_markup("< 5 items")
    assert split_text("<3 you.") == [Chunk("<3 you.")]


@pytest.mark.parametrize("text", [
    "<speak>unclosed",
    "<a><b></a>",
    "<speak>&undefined;</speak>",
])
def test_malformed_markup_is_refused(text: str) -> None:
    """Markup that does not parse is a ValueError."""
    with pytest.raises(ValueError, match="not well-formed"):
        split_text(text)


@pytest.mark.parametrize("text", [
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
    "<speak>&lol2;</speak>",
    '<!DOCTYPE speak SYSTEM "file:///etc/passwd"><speak/>',
    '<speak><!-- x --><!doctype x></speak>',
    '<!ENTITY x "y"><speak/>',
])
def test_doctype_and_entity_declarations_are_refused(text: str) -> None:
    """Billion laughs and external entities never reach a parser."""
    with pytest.raises(ValueError, match="DOCTYPE or ENTITY"):
        split_text(text)


words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Z", "Cc")),
                min_size=1, max_size=40)
separators = st.sampled_from([" ", "  ", ", ", ". ", "! ", "? ", "\n", "\n\n", "; "])


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(words, separators), min_size=1, max_size=60),
       st.integers(min_value=5, max_value=MAX_CHUNK_CHARS))
def test_chunks_are_bounded_lose_nothing_and_keep_words(
        parts: list[tuple[str, str]], bound: int) -> None:
    """Every chunk fits the bound, the words come back in order, short words are never cut."""
    text = "".join(word + sep for word, sep in parts)
    if is_markup(text):
        return
    if not text.split():
        return
    chunks = split_text(text, max_chars=bound)
    assert all(0 < len(c.text) <= bound and not c.markup for c in chunks)
    assert "".join("".join(c.text.split()) for c in chunks) == "".join(text.split())
    pieces = [token for c in chunks for token in c.text.split()]
    for token in text.split():
        if len(token) <= bound:
            assert token in pieces
