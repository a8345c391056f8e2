"""SSML say-as: the words said for numbers, dates, phone numbers and spelled text in the voices' languages."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from num2words import CONVERTER_CLASSES

from idlakd.synth.sayas import (DATE_FORMATS, INTERPRETATIONS, MAX_DIGITS, MAX_TEXT_CHARS,
                                SayAsError, say_as)

# (interpret-as, text, lang, format, words said)
SAID = [
    # Spelling: one by one, digits as words in the language.
    ("characters", "AB12", "en", None, "A B one two"),
    ("spell-out", "x 9", "fr", None, "x neuf"),
    ("verbatim", "a1", "ru", None, "a один"),
    ("characters", "B-2", "de", None, "B - zwei"),
    ("digits", "2024", "en", None, "two zero two four"),
    ("digits", "2024", "de", None, "zwei null zwei vier"),
    ("digits", "12 34", "ro", None, "unu doi trei patru"),
    # Cardinals: sign, thousands separators, decimals.
    ("cardinal", "1,234,567", "en", None,
     "one million, two hundred and thirty-four thousand, five hundred and sixty-seven"),
    ("number", "1 234", "en", None, "one thousand, two hundred and thirty-four"),
    ("cardinal", "-12", "en", None, "minus twelve"),
    ("cardinal", "+12", "en", None, "twelve"),
    ("cardinal", "-0.05", "en", None, "minus zero point zero five"),
    ("cardinal", "3.5", "en", None, "three point five"),
    ("cardinal", "21", "fr", None, "vingt et un"),
    ("cardinal", "1 234", "fr", None, "mille deux cent trente-quatre"),
    ("cardinal", "-7", "fr", None, "moins sept"),
    ("cardinal", "21", "de", None, "einundzwanzig"),
    ("cardinal", "22", "ro", None, "douăzeci și doi"),
    ("cardinal", "1000", "ro-RO", None, "o mie"),
    ("cardinal", "21", "ru", None, "двадцать один"),
    ("cardinal", "-3", "ru-RU", None, "минус три"),
    # Ordinals: bare or with the language's written suffix.
    ("ordinal", "3", "en", None, "third"),
    ("ordinal", "3rd", "en", None, "third"),
    ("ordinal", "21st", "en-GB", None, "twenty-first"),
    ("ordinal", "1,000th", "en", None, "one thousandth"),
    ("ordinal", "3e", "fr", None, "troisième"),
    ("ordinal", "1er", "fr", None, "premier"),
    ("ordinal", "3.", "de", None, "dritte"),
    ("ordinal", "21", "de", None, "einundzwanzigste"),
    ("ordinal", "3", "ro", None, "al treilea"),
    ("ordinal", "3-й", "ru", None, "третий"),
    ("ordinal", "21", "ru", None, "двадцать первый"),
    # Telephone numbers: digit by digit, a comma (a pause) between written groups.
    ("telephone", "+1 (555) 123-4567", "en", None,
     "plus one, five five five, one two three, four five six seven"),
    ("telephone", "0131 496 0000", "en-GB", None,
     "zero one three one, four nine six, zero zero zero zero"),
    ("telephone", "01.23.45", "fr", None, "zéro un, deux trois, quatre cinq"),
    ("telephone", "+49 30 1234", "de", None, "+ vier neun, drei null, eins zwei drei vier"),
    # Dates: the language's own order and month names (CLDR); years said as years.
    ("date", "2024-03-05", "en", None, "March fifth, twenty twenty-four"),
    ("date", "03/05/2024", "en-US", None, "March fifth, twenty twenty-four"),
    ("date", "03/05/2024", "en-GB", None, "third May twenty twenty-four"),
    ("date", "5/3/2024", "en", "dmy", "March fifth, twenty twenty-four"),
    ("date", "2024.03.05", "en", "ymd", "March fifth, twenty twenty-four"),
    ("date", "1905-01-02", "en", None, "January second, nineteen oh-five"),
    ("date", "12/25", "en", "md", "December twenty-fifth"),
    ("date", "2024-03", "en", "ym", "March twenty twenty-four"),
    ("date", "3", "en", "m", "March"),
    ("date", "5", "en", "d", "fifth"),
    ("date", "2024", "en", "y", "twenty twenty-four"),
    ("date", "29/02", "en", "dm", "February twenty-ninth"),
    ("date", "2024-03-05", "fr", None, "cinq mars deux mille vingt-quatre"),
    ("date", "01/03/2024", "fr-FR", None, "premier mars deux mille vingt-quatre"),
    ("date", "05/2024", "fr", None, "mai deux mille vingt-quatre"),
    ("date", "2024-03-05", "de", None, "fünfte März zweitausendvierundzwanzig"),
    ("date", "5.3.2024", "de-DE", None, "fünfte März zweitausendvierundzwanzig"),
    ("date", "5.3.", "de", "dm", "fünfte März"),
    ("date", "2024-03-05", "ro", None, "cinci martie două mii douăzeci și patru"),
    ("date", "05.03.2024", "ro", None, "cinci martie două mii douăzeci și patru"),
    ("date", "2024-03-05", "ru", None, "пятое марта две тысячи двадцать четвёртого года"),
    ("date", "03.2024", "ru", "my", "март две тысячи двадцать четвёртого года"),
    ("date", "2024", "ru", "y", "две тысячи двадцать четыре"),
    ("date", "2024-03-05", "es", None, "cinco de marzo de dos mil veinticuatro"),
    ("cardinal", "123", "am", None, "አንድ መቶ ሃያ ሦስት"),
    # A language num2words lacks is said in English, month names included.
    ("date", "2024-03-05", "zh-CN", None, "March fifth, twenty twenty-four"),
    ("cardinal", "12", "xx", None, "twelve"),
    ("cardinal", "12", "not a tag!", None, "twelve"),
    # Unknown interpretations leave the text as it is.
    ("currency", "$12", "en", None, "$12"),
    ("made-up", "x" * 100, "en", None, "x" * 100),
]

# (interpret-as, text, lang, format, words in the error message)
ERRORS = [
    ("date", "31/02/2024", "en", "dmy", "interpret-as 'date': '31/02/2024' is not a date in format 'dmy'"),
    ("date", "2023-02-29", "en", None, "is not a date in format 'ymd'"),
    ("date", "13/13/2024", "en", None, "is not a date in format 'mdy'"),
    ("date", "2024-03-05", "en", "dmy", "is not a date in format 'dmy'"),
    ("date", "0000-01-01", "en", None, "is not a date"),
    ("date", "5 March", "en", None, "is not a date"),
    ("date", "5/3", "en", "ymd", "is not a date in format 'ymd'"),
    ("date", "5", "en", None, "needs a format"),
    ("date", "2024-03-05", "en", "ydm-ish", "unknown format 'ydm-ish'"),
    ("date", "١٢/٠٣/٢٠٢٤", "ar", None, "is not a date"),
    ("cardinal", "1" * (MAX_DIGITS + 1), "en", None, f"has more than {MAX_DIGITS} digits"),
    ("cardinal", "1." + "1" * MAX_DIGITS, "fr", None, f"has more than {MAX_DIGITS} digits"),
    ("ordinal", "9" * (MAX_DIGITS + 1), "ru", None, f"has more than {MAX_DIGITS} digits"),
    ("cardinal", "1234567", "am", None, "has more than 6 digits"),
    ("ordinal", "9" * 15, "es-CO", None, "has more than 14 digits"),
    ("ordinal", "9" * 15, "ca", None, "has more than 14 digits"),
    ("cardinal", "twelve", "en", None, "is not a number"),
    ("cardinal", "1,23,456", "en", None, "is not a number"),
    ("cardinal", "1,234 567", "en", None, "is not a number"),
    ("cardinal", "2,5", "de-DE", None, "is not a number"),
    ("cardinal", "", "en", None, "is not a number"),
    ("ordinal", "-3", "en", None, "is not an ordinal"),
    ("ordinal", "third", "en", None, "is not an ordinal"),
    ("ordinal", "0", "pl", None, "no words for 0 in language 'pl'"),
    ("cardinal", "-1", "pl", None, "no words for"),
    ("digits", "12a", "en", None, "is not a string of digits"),
    ("telephone", "call me", "en", None, "is not a telephone number"),
    ("characters", " \t", "en", None, "nothing to spell"),
    ("characters", "x" * (MAX_TEXT_CHARS + 1), "en", None, f"longer than {MAX_TEXT_CHARS} characters"),
    ("date", "1" * (MAX_TEXT_CHARS + 1), "en", None, f"longer than {MAX_TEXT_CHARS} characters"),
]


@pytest.mark.parametrize(("interpret_as", "text", "lang", "format", "said"),
                         SAID)
def test_say_as_says(interpret_as: str, text: str, lang: str, format: str | None, said: str) -> None:
    """Each interpretation says the expected words in the language asked."""
    assert say_as(interpret_as, text, lang, format) == said


@pytest.mark.parametrize(("interpret_as", "text", "lang", "format", "message"), ERRORS)
def test_say_as_refuses(interpret_as: str, text: str, lang: str, format: str | None,
                        message: str) -> None:
    """Texts an interpretation cannot read raise SayAsError naming the interpretation and the problem."""
    with pytest.raises(SayAsError) as raised:
        say_as(interpret_as, text, lang, format)
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"interpret-as '{interpret_as}'")


def test_interpretations_are_all_spoken() -> None:
    """Every listed interpretation changes a text it can read (none silently falls through)."""
    samples = {"characters": "ab", "spell-out": "ab", "verbatim": "ab", "digits": "12",
               "cardinal": "12", "number": "12", "ordinal": "12", "telephone": "12", "date": "2024-01-02"}
    assert set(samples) == set(INTERPRETATIONS)
    for interpret_as, text in samples.items():
        assert say_as(interpret_as, text) != text


def test_interpret_as_and_detail_are_read_loosely() -> None:
    """interpret-as is case-insensitive and detail changes nothing."""
    assert say_as(" Cardinal ", "7", detail="2") == "seven"


# Texts worth reading: well-formed numbers, dates and phone numbers as well as anything at all.
_TEXTS = st.one_of(
    st.text(max_size=MAX_TEXT_CHARS + 4),
    st.text(alphabet=string.digits + ",. -+/()", max_size=MAX_TEXT_CHARS),
    st.from_regex(r"[+-]?\d{1,40}(\.\d{1,20})?", fullmatch=True),
    st.from_regex(r"\d{1,4}[-/.]\d{1,4}([-/.]\d{1,4})?", fullmatch=True),
    st.from_regex(r"\d{1,30}(st|nd|rd|th|e|\.|-й)?", fullmatch=True),
)
_LANGUAGES = st.one_of(st.sampled_from(sorted(CONVERTER_CLASSES)),
                       st.sampled_from(["en-GB", "en-US", "fr-FR", "de-DE", "ro", "ru", "zh", "pt-BR"]),
                       st.text(max_size=12))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interpret_as=st.sampled_from(INTERPRETATIONS), text=_TEXTS, lang=_LANGUAGES,
       format=st.one_of(st.none(), st.sampled_from(DATE_FORMATS), st.text(max_size=5)))
def test_say_as_raises_only_say_as_error_and_says_a_bounded_amount(
        interpret_as: str, text: str, lang: str, format: str | None) -> None:
    """Any text in any language: words or SayAsError, never another exception, never a flood of words.

    The bound: a number says at most three words a digit (a digit word, a scale word and a
    conjunction; Welsh, the wordiest num2words language, was measured at 2.9), spelling says
    one word a character, a date says one to three words a field; +4 covers one-character
    texts. Characters: num2words' longest ordinals run to 16 characters a digit.
    """
    try:
        said = say_as(interpret_as, text, lang, format)
    except SayAsError:
        return
    assert said.strip()
    assert len(said.split()) <= 4 * len(text) + 4
    assert len(said) <= 20 * len(text) + 40
