"""SSML say-as: numbers, dates, telephone numbers and spelled text turned into the words to speak.

Number words come from num2words, month names and each language's date order from
babel's CLDR data. A language num2words lacks is spoken in English (numbers and month
names alike, so a date never mixes two languages). An interpret-as value not in
INTERPRETATIONS leaves the text as it is: SSML lets a processor ignore one it does not know.
"""

from __future__ import annotations

import calendar
import dataclasses
import decimal
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import babel
import babel.dates
from num2words import CONVERTER_CLASSES, num2words

#: The interpret-as values said as words; any other value leaves the text unchanged.
INTERPRETATIONS: Final = (
    "characters", "spell-out", "verbatim", "digits", "cardinal", "number", "ordinal",
    "telephone", "date",
)
#: The format values of interpret-as="date": which fields the text has, in which order.
DATE_FORMATS: Final = ("mdy", "dmy", "ymd", "md", "dm", "ym", "my", "d", "m", "y")
#: Longest say-as text accepted (a phone number or a date is far shorter).
MAX_TEXT_CHARS: Final = 64
#: Most digits in a number: num2words has no words for larger ones in most languages.
MAX_DIGITS: Final = 30

# num2words raises whatever its language module happens to hit on a number it cannot
# say (measured over every language, 1 to 30 digits: OverflowError above its largest
# scale word, a not-implemented error for a missing form, KeyError, IndexError,
# AttributeError, ValueError, TypeError, RecursionError; AssertionError in its code):
# every one of them means "no words for this", never a bug of ours.
_NUM2WORDS_ERRORS: Final = (ArithmeticError, LookupError, ValueError, TypeError, RuntimeError,
                            AttributeError, AssertionError)
# Fewer digits where num2words is slow (measured: every language, 1 to 30 digits):
# Amharic loops for minutes from seven digits on; Spanish and Catalan ordinals from 15
# digits recurse to Python's limit (3-4 ms before the RecursionError). Elsewhere a
# 30-digit number takes at most about 1 ms.
_MAX_DIGITS_BY_LANGUAGE: Final = {("am", "cardinal"): 6, ("am", "ordinal"): 6,
                                  ("es", "ordinal"): 14, ("ca", "ordinal"): 14}

# 1,234,567 or 1 234 567 (the same separator throughout) or plain digits; "." decimals.
_NUMBER: Final = re.compile(
    r"([+\-\u2212]?)(\d{1,3}(?:([, \u00a0\u202f])\d{3})(?:\3\d{3})*|\d+)(?:\.(\d+))?")
# An ordinal: a number and an optional written suffix ("3rd", "3.", "3e", "3-й", "3º").
_ORDINAL: Final = re.compile(
    r"(\d{1,3}(?:([, \u00a0\u202f])\d{3})(?:\2\d{3})*|\d+)(?:\.|-?[^\W\d_]{1,4})?")
_TELEPHONE: Final = re.compile(r"(\+?)\s*(\d+(?:[\s\-./()]+\d+)*)\)?")
_TELEPHONE_SEPARATOR: Final = re.compile(r"[\s\-./()]+")
_DIGITS: Final = re.compile(r"\d+(?:[\s\-]+\d+)*")
_DATE_SEPARATOR: Final = re.compile(r"[-/.]")
_LANGUAGE_TAG: Final = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
# The CLDR skeleton naming a date with the given fields ("m" alone is a month name), and
# the pattern used where a locale's CLDR data lacks that skeleton (Chechen has none).
_SKELETONS: Final = {"dmy": ("yMMMMd", "d MMMM y"), "dm": ("MMMMd", "d MMMM"),
                     "my": ("yMMMM", "MMMM y"), "d": ("d", "d"), "y": ("y", "y")}
# num2words spells some languages under another code than BCP 47.
_NUM2WORDS_ALIASES: Final = {"nb": "no", "nn": "no", "kk": "kz"}


class SayAsError(ValueError):
    """A say-as text that cannot be read as its interpret-as says (the message names the problem)."""


@dataclasses.dataclass(frozen=True)
class _DateStyle:
    """How a language says a day and a year inside a date (CLDR gives the order, not the grammar)."""

    #: The day as an ordinal ("fifth") rather than a cardinal ("cinq").
    ordinal_day: bool = False
    #: Only the first day of the month is an ordinal ("premier mars", "deux mars").
    ordinal_first: bool = False
    #: num2words arguments for the day.
    day_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: num2words arguments for a year next to a day or a month; None: to="year".
    year_options: Mapping[str, str] | None = None
    #: Words for the abbreviations of CLDR's date patterns (others are not spoken).
    abbreviations: Mapping[str, str] = dataclasses.field(default_factory=dict)


# Grammar CLDR's patterns do not carry. Languages not listed say a cardinal day and the
# year as num2words' to="year"; a "." after the day in the pattern ("5. März") marks an
# ordinal day in every language that writes it.
_DATE_STYLES: Final = {
    "en": _DateStyle(ordinal_day=True),
    "fr": _DateStyle(ordinal_first=True),
    # num2words' Japanese year is an era name ("令和六年"); CLDR's pattern adds its own 年.
    "ja": _DateStyle(year_options={"to": "cardinal"}),
    # "пятое марта две тысячи двадцать четвёртого года": neuter day, genitive ordinal year.
    "ru": _DateStyle(ordinal_day=True, day_options={"gender": "n"},
                     year_options={"to": "ordinal", "case": "g"}, abbreviations={"г": "года"}),
}


@dataclasses.dataclass(frozen=True)
class _Language:
    """The two libraries' names for one language."""

    #: num2words' language code (a key of CONVERTER_CLASSES).
    numbers: str
    #: babel's locale: month names and date patterns.
    locale: babel.Locale


def say_as(interpret_as: str, text: str, lang: str = "en", format: str | None = None,
           detail: str | None = None) -> str:
    """The words to speak for an SSML say-as text; an unknown interpret-as leaves it unchanged."""
    del detail  # SSML's detail (e.g. punctuation to read) changes nothing we say.
    kind = interpret_as.strip().lower()
    say = _SAYERS.get(kind)
    if say is None:
        # SSML lets a processor ignore an interpretation it does not know.
        return text
    if len(text) > MAX_TEXT_CHARS:
        raise SayAsError(f"interpret-as '{kind}': text longer than {MAX_TEXT_CHARS} characters")
    return say(kind, text.strip(), _language(lang), format)


def _spell(kind: str, text: str, language: _Language, format: str | None) -> str:
    """Each letter and digit on its own (digits as words); whitespace and control characters dropped."""
    words = [_words(kind, int(c), language.numbers) if c.isdecimal() else c
             for c in text if c.isprintable() and not c.isspace()]
    if not words:
        raise SayAsError(f"interpret-as '{kind}': nothing to spell")
    return " ".join(words)


def _digits(kind: str, text: str, language: _Language, format: str | None) -> str:
    """Each digit as a word."""
    if _DIGITS.fullmatch(text) is None:
        raise SayAsError(f"interpret-as '{kind}': {text!r} is not a string of digits")
    return _each_digit(kind, text, language)


def _cardinal(kind: str, text: str, language: _Language, format: str | None) -> str:
    """An integer or decimal, with an optional sign and thousands separators."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise SayAsError(f"interpret-as '{kind}': {text!r} is not a number")
    sign, whole, separator, fraction = match.groups()
    whole = whole.replace(separator, "") if separator else whole
    _check_digits(kind, text, whole + (fraction or ""), language.numbers)
    value = decimal.Decimal(f"{whole}.{fraction}") if fraction else decimal.Decimal(whole)
    number: int | decimal.Decimal = value if fraction else int(value)
    words = _words(kind, number, language.numbers)
    if sign in ("-", "\u2212") and value:
        # num2words drops the sign of -0.5 (its integer part is 0): the minus word goes
        # in front of the magnitude instead.
        minus = _minus_word(language.numbers)
        words = f"{minus} {words}" if minus else _words(kind, -number, language.numbers)
    return words


@functools.lru_cache(maxsize=64)
def _minus_word(lang: str) -> str:
    """The language's minus word, from how num2words says -1 ("" when that does not work)."""
    try:
        one, minus_one = str(num2words(1, lang=lang)), str(num2words(-1, lang=lang))
    except _NUM2WORDS_ERRORS:
        return ""
    return minus_one.removesuffix(one).strip() if minus_one.endswith(one) else ""


def _ordinal(kind: str, text: str, language: _Language, format: str | None) -> str:
    """An ordinal number, written bare or with a suffix ("3", "3rd", "3.", "3e")."""
    match = _ORDINAL.fullmatch(text)
    if match is None:
        raise SayAsError(f"interpret-as '{kind}': {text!r} is not an ordinal number")
    whole, separator = match.groups()
    whole = whole.replace(separator, "") if separator else whole
    _check_digits(kind, text, whole, language.numbers, "ordinal")
    return _words(kind, int(whole), language.numbers, to="ordinal")


def _telephone(kind: str, text: str, language: _Language, format: str | None) -> str:
    """Digits one by one, a comma between the written groups so the engine pauses."""
    match = _TELEPHONE.fullmatch(text.removeprefix("("))
    if match is None:
        raise SayAsError(f"interpret-as '{kind}': {text!r} is not a telephone number")
    plus, number = match.groups()
    groups = [_each_digit(kind, group, language) for group in _TELEPHONE_SEPARATOR.split(number)
              if group]
    # Other languages get the "+" itself: the engine reads it in its own language.
    lead = ("plus " if language.numbers.startswith("en") else "+ ") if plus else ""
    return lead + ", ".join(groups)


def _date(kind: str, text: str, language: _Language, format: str | None) -> str:
    """A date of the given field order, said in the language's own order with its month names."""
    fields = _DATE_SEPARATOR.split(text.removesuffix("."))
    if not all(part.isascii() and part.isdigit() for part in fields):
        raise SayAsError(f"interpret-as 'date': {text!r} is not a date")
    order = _date_order(text, fields, language) if format is None else format.strip().lower()
    if order not in DATE_FORMATS:
        raise SayAsError(f"interpret-as 'date': unknown format {format!r} "
                         f"(one of {', '.join(DATE_FORMATS)})")
    values = _date_fields(text, fields, order)
    if values is None:
        raise SayAsError(f"interpret-as 'date': {text!r} is not a date in format {order!r}")
    return _say_date(values, language)


def _date_order(text: str, fields: list[str], language: _Language) -> str:
    """The field order of a date without format: ISO when it starts with a year, else the language's."""
    if len(fields) == 3:
        return "ymd" if len(fields[0]) == 4 else _locale_order(language.locale)
    if len(fields) == 2:
        if len(fields[0]) == 4:
            return "ym"
        if len(fields[1]) == 4:
            return "my"
        return _locale_order(language.locale).replace("y", "")
    if len(fields) == 1 and len(fields[0]) == 4:
        return "y"
    raise SayAsError(f"interpret-as 'date': {text!r} needs a format "
                     f"(one of {', '.join(DATE_FORMATS)})")


def _date_fields(text: str, fields: list[str], order: str) -> dict[str, int] | None:
    """The date's day, month and year by letter, or None when they are no calendar date."""
    if len(fields) != len(order):
        return None
    widths = {"d": 2, "m": 2, "y": 4}
    if any(len(part) > widths[letter] for letter, part in zip(order, fields)):
        return None
    values = {letter: int(part) for letter, part in zip(order, fields)}
    year, month, day = values.get("y", 2000), values.get("m", 1), values.get("d", 1)
    # A leap year stands in for a missing year so that "29/02" is a date.
    if not (1 <= year and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        return None
    if "m" not in values and day > 31:
        return None
    return values


def _say_date(values: dict[str, int], language: _Language) -> str:
    """Say a checked date in the order and with the words of the language's CLDR pattern."""
    locale = language.locale
    style = _DATE_STYLES.get(language.numbers.split("_")[0], _DateStyle())
    letters = "".join(sorted(values, key="dmy".index))
    if letters == "m":
        return babel.dates.get_month_names("wide", "stand-alone", locale)[values["m"]]
    skeleton, fallback = _SKELETONS[letters]
    pattern = locale.datetime_skeletons.get(skeleton)
    tokens = _merged(babel.dates.tokenize_pattern(fallback if pattern is None else pattern.pattern))
    words: list[str] = []
    for index, (token, value) in enumerate(tokens):
        if token == "chars":
            words.append(_date_literal(value, style))
            continue
        field, width = value
        if field == "d":
            after = tokens[index + 1][1] if index + 1 < len(tokens) else ""
            ordinal = (style.ordinal_day or (isinstance(after, str) and after.startswith("."))
                       or (style.ordinal_first and values["d"] == 1))
            words.append(_words("date", values["d"], language.numbers,
                                to="ordinal" if ordinal else "cardinal", **style.day_options))
        elif field in "ML" and width >= 3:
            context = "stand-alone" if field == "L" else "format"
            words.append(babel.dates.get_month_names("wide", context, locale)[values["m"]])
        elif field in "ML":
            words.append(_words("date", values["m"], language.numbers))
        elif field == "y":
            # A style's year grammar belongs next to a day or month ("…четвёртого года").
            options = style.year_options if style.year_options and len(values) > 1 else None
            options = options or {"to": "year"}
            words.append(_words("date", values["y"], language.numbers, **options))
    return " ".join(" ".join(words).split()).replace(" ,", ",")


def _merged(tokens: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A pattern's tokens with neighbouring literal texts joined ("'m'." is one "m." token)."""
    merged: list[tuple[str, Any]] = []
    for token, value in tokens:
        if token == "chars" and merged and merged[-1][0] == "chars":
            merged[-1] = ("chars", merged[-1][1] + value)
        else:
            merged.append((token, value))
    return merged


def _date_literal(chars: str, style: _DateStyle) -> str:
    """A pattern's literal text as said: words and commas kept, abbreviations expanded or dropped."""
    spoken = []
    for word in chars.replace("\u202f", " ").replace("\u00a0", " ").split(" "):
        if word.endswith(".") and word.rstrip("."):
            # "г." is an abbreviation: its word if the style has it, else nothing.
            spoken.append(style.abbreviations.get(word.rstrip("."), ""))
        else:
            spoken.append(word.strip("."))
    return " " + " ".join(spoken) + " "


def _each_digit(kind: str, text: str, language: _Language) -> str:
    """The digits of a text as words, one by one."""
    return " ".join(_words(kind, int(c), language.numbers) for c in text if c.isdecimal())


def _check_digits(kind: str, text: str, digits: str, lang: str, to: str = "cardinal") -> None:
    """Refuse numbers longer than num2words can say quickly in the language."""
    most = _MAX_DIGITS_BY_LANGUAGE.get((lang.split("_")[0], to), MAX_DIGITS)
    if len(digits) > most:
        raise SayAsError(f"interpret-as '{kind}': {text!r} has more than {most} digits")


def _words(kind: str, number: int | decimal.Decimal, lang: str, **options: Any) -> str:
    """num2words, its errors made SayAsError and an empty answer refused."""
    try:
        words = str(num2words(number, lang=lang, **options))
    except _NUM2WORDS_ERRORS as error:
        raise SayAsError(
            f"interpret-as '{kind}': no words for {number} in language '{lang}'") from error
    if not words.strip():
        raise SayAsError(f"interpret-as '{kind}': no words for {number} in language '{lang}'")
    return words


@functools.lru_cache(maxsize=64)
def _language(tag: str) -> _Language:
    """num2words' code and babel's locale for an xml:lang tag; English when num2words lacks it."""
    if _LANGUAGE_TAG.fullmatch(tag.strip()) is None:
        return _ENGLISH
    parts = tag.strip().replace("-", "_").split("_")
    base = _NUM2WORDS_ALIASES.get(parts[0].lower(), parts[0].lower())
    region = parts[1].upper() if len(parts) > 1 and len(parts[1]) == 2 else ""
    numbers = f"{base}_{region}" if f"{base}_{region}" in CONVERTER_CLASSES else base
    if numbers not in CONVERTER_CLASSES:
        return _ENGLISH
    names = [f"{parts[0].lower()}_{region}"] if region else []
    for name in [*names, parts[0].lower()]:
        try:
            return _Language(numbers, babel.Locale.parse(name))
        except (babel.UnknownLocaleError, ValueError):
            # No data for the region: the language's own.
            continue
    return _ENGLISH


@functools.lru_cache(maxsize=64)
def _locale_order(locale: babel.Locale) -> str:
    """The day, month and year order of a locale's short date ("mdy" for en-US, "dmy" for en-GB)."""
    fields = [value[0] for token, value in babel.dates.tokenize_pattern(
        locale.date_formats["short"].pattern) if token == "field"]
    order = "".join({"d": "d", "M": "m", "L": "m", "y": "y"}.get(f, "") for f in fields)
    return order if sorted(order) == ["d", "m", "y"] else "mdy"


_ENGLISH: Final = _Language("en", babel.Locale.parse("en"))

_SAYERS: Final[Mapping[str, Callable[[str, str, _Language, str | None], str]]] = {
    "characters": _spell, "spell-out": _spell, "verbatim": _spell, "digits": _digits,
    "cardinal": _cardinal, "number": _cardinal, "ordinal": _ordinal, "telephone": _telephone,
    "date": _date,
}
