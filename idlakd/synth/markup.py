"""SSML and Idlak XML read by the daemon: an allowlist of elements and attributes, into runs, breaks and marks.

expat parses; no DTD, no entity, nothing outside the request is ever read.
prosody and emphasis become each run's prosody, say-as becomes words
(idlakd.synth.sayas), a block's edge ends a sentence (BOUNDARY).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from typing import Any, Callable, Final
from xml.parsers import expat

from idlakd.synth.options import PITCH_RANGE, SPEED_RANGE, VOLUME_RANGE
from idlakd.synth.sayas import SayAsError, say_as
from idlakd.synth.segments import (BOUNDARY, NEUTRAL, Break, DocumentError, Item, Marker,
                                   Prosody, Run, clean)

#: One break may last at most this long, whatever the markup asks.
MAX_BREAK_SECONDS: Final = 10.0
#: Markup nesting bound (a deep document costs the parser, never the engine).
MAX_DEPTH: Final = 32

SSML_NAMESPACE: Final = "http://www.w3.org/2001/10/synthesis"
XML_NAMESPACE: Final = "http://www.w3.org/XML/1998/namespace"

# Markup starts like an XML document: a tag, a declaration or a comment.
_MARKUP_START: Final = re.compile(r"<[A-Za-z_?!]")
_TIME: Final = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)?\s*$")
# SSML's break strengths as pauses (seconds).
_STRENGTHS: Final = {"none": 0.0, "x-weak": 0.1, "weak": 0.25, "medium": 0.4,
                     "strong": 0.75, "x-strong": 1.2}
_MAX_ATTRIBUTE_CHARS: Final = 64


def is_markup(text: str) -> bool:
    """Whether the text is meant as an XML document rather than plain text (a BOM may lead)."""
    return _MARKUP_START.match(_leading_stripped(text)) is not None


def _leading_stripped(text: str) -> str:
    """text without the whitespace and byte-order marks before it."""
    return text.lstrip().lstrip("\ufeff").lstrip()


#: Allowed elements and, for each, its allowed attributes. SSML's structure and
#: Idlak's (doc, parl, spurt) are containers; lang sets the language say-as uses.
_ELEMENTS: Final[dict[str, frozenset[str]]] = {
    "speak": frozenset({"version", "xml:lang", "lang"}),
    "doc": frozenset(),
    "parl": frozenset({"no", "id"}),
    "spurt": frozenset({"no", "id"}),
    "p": frozenset({"xml:lang"}),
    "s": frozenset({"xml:lang"}),
    "break": frozenset({"time", "strength", "type"}),
    "prosody": frozenset({"rate", "pitch", "volume", "range", "contour", "duration"}),
    "emphasis": frozenset({"level"}),
    "say-as": frozenset({"interpret-as", "format", "detail"}),
    "sub": frozenset({"alias"}),
    "lang": frozenset({"xml:lang"}),
    "mark": frozenset({"name"}),
}
# Elements whose end closes a sentence.
_BLOCKS: Final = frozenset({"speak", "doc", "parl", "spurt", "p", "s"})
# Elements whose text is said differently: their start and end end the current run.
_VOICED: Final = frozenset({"prosody", "emphasis"})
_RATES: Final = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.3,
                 "x-fast": 1.7}
_PITCHES: Final = {"x-low": -6.0, "low": -3.0, "medium": 0.0, "default": 0.0, "high": 3.0,
                   "x-high": 6.0}
# "silent" is the quietest idlakd makes, not silence.
_VOLUMES: Final = {"silent": VOLUME_RANGE[0], "x-soft": -12.0, "soft": -6.0, "medium": 0.0,
                   "default": 0.0, "loud": 6.0, "x-loud": 10.0}
_EMPHASIS: Final = {"strong": Prosody(0.9, 1.0, 4.0), "moderate": Prosody(0.95, 0.5, 2.0),
                    "none": NEUTRAL, "reduced": Prosody(1.05, -0.5, -3.0)}
_NUMBER: Final = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d+)?|\.\d+))\s*(%|st|dB|db|Hz|hz)?\s*$")


@dataclasses.dataclass(frozen=True)
class _Frame:
    """An open element: its name, and the prosody and language in force inside it."""

    name: str
    prosody: Prosody
    lang: str


class _SourceIndex:
    """Character offsets in the request text of the byte offsets expat reports."""

    def __init__(self, text: str, lead: int, encoded: bytes) -> None:
        self._lead = lead
        self._starts: list[int] | None = None
        if len(encoded) != len(text):  # not ASCII: bytes and characters differ
            offsets = [0]
            for char in text:
                offsets.append(offsets[-1] + len(char.encode("utf-8", "surrogatepass")))
            self._starts = offsets

    def char(self, byte: int) -> int:
        """The request-text character offset of a byte offset into the parsed markup."""
        if self._starts is None:
            return self._lead + byte
        return self._lead + bisect.bisect_right(self._starts, byte) - 1


class _MarkupReader:
    """Expat handlers that turn allowed markup into runs, breaks and marks, refusing the rest."""

    def __init__(self, parser: Any, source: str, index: _SourceIndex, prosody: Prosody,
                 lang: str) -> None:
        self._parser = parser
        self._source = source
        self._index = index
        self._base = _Frame("", prosody, lang)
        self.items: list[Item] = []
        self._text: list[str] = []
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._stack: list[_Frame] = []
        self._alias_depth: int | None = None
        self._say_as: tuple[dict[str, str], list[str], list[int]] | None = None

    def _where(self) -> str:
        """The parser's position, for error messages."""
        return f"line {self._parser.CurrentLineNumber}"

    def _position(self) -> int:
        """The request-text character offset where the current event starts."""
        return self._index.char(self._parser.CurrentByteIndex)

    def _tag_end(self, start: int) -> int:
        """The offset just after the tag that starts at start."""
        end = self._source.find(">", start)
        return len(self._source) if end < 0 else end + 1

    @property
    def _top(self) -> _Frame:
        """The innermost open element (the document's defaults outside any)."""
        return self._stack[-1] if self._stack else self._base

    def _add(self, text: str, start: int, end: int | None = None) -> None:
        """Text for the current run: each character from start on, or all of it from start..end."""
        self._text.append(text)
        if end is None:
            self._starts.extend(range(start, start + len(text)))
            self._ends.extend(range(start + 1, start + len(text) + 1))
        else:
            self._starts.extend([start] * len(text))
            self._ends.extend([end] * len(text))

    def _flush(self) -> None:
        """End the current text run (at a block's edge, a break, a mark or a change of prosody)."""
        text = "".join(self._text)
        # Whitespace alone is kept: it separates the words of the runs around it.
        if text:
            prosody = self._top.prosody
            self.items.append(Run(text, self._starts, self._ends,
                                   None if prosody == NEUTRAL else prosody))
        self._text, self._starts, self._ends = [], [], []

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        """An element opens: check it and its attributes against the allowlist."""
        name = _local_name(tag, self._where)
        if name not in _ELEMENTS:
            raise DocumentError(f"<{name}> is not allowed in markup ({self._where()}).")
        if len(self._stack) >= MAX_DEPTH:
            raise DocumentError(f"<{name}>: markup nested deeper than {MAX_DEPTH} ({self._where()}).")
        if self._say_as is not None:
            raise DocumentError(f"<say-as> must contain text only, not <{name}> ({self._where()}).")
        values = self._attributes(name, attributes)
        top = self._top
        prosody = top.prosody
        if name in _BLOCKS or name in _VOICED or name in ("break", "mark"):
            self._flush()
        if name in _BLOCKS:
            self.items.append(BOUNDARY)
        if name == "prosody":
            prosody = self._prosody(values).within(prosody)
        elif name == "emphasis":
            level = values.get("level", "moderate")
            if level not in _EMPHASIS:
                raise DocumentError(f"<emphasis>: level {level!r} is not one of "
                                    f"{', '.join(_EMPHASIS)} ({self._where()}).")
            prosody = _EMPHASIS[level].within(prosody)
        elif name == "break":
            self.items.append(Break(round(_break_seconds(values, self._where) * 1000)))
        elif name == "mark":
            if not values.get("name", "").strip():
                raise DocumentError(f"<mark> needs a name ({self._where()}).")
            start = self._position()
            self.items.append(Marker(values["name"], start, self._tag_end(start)))
        elif name == "say-as":
            if "interpret-as" not in values:
                raise DocumentError(f"<say-as> needs interpret-as ({self._where()}).")
            self._say_as = (values, [], [])
        elif name == "sub" and self._alias_depth is None:
            # The alias is spoken instead of the element's content.
            start = self._position()
            self._add(f" {clean(values.get('alias', ''))} ", start, self._tag_end(start))
            self._alias_depth = len(self._stack) + 1
        lang = values.get("xml:lang", top.lang)
        self._stack.append(_Frame(name, prosody, lang))

    def _attributes(self, name: str, attributes: dict[str, str]) -> dict[str, str]:
        """The element's attributes by name, each allowed and bounded."""
        allowed = _ELEMENTS[name]
        values: dict[str, str] = {}
        for raw, value in attributes.items():
            attribute = _attribute_name(raw)
            if attribute not in allowed:
                raise DocumentError(f"<{name}>: attribute '{attribute}' is not allowed "
                                    f"({self._where()}).")
            if len(value) > _MAX_ATTRIBUTE_CHARS:
                raise DocumentError(f"<{name}>: attribute '{attribute}' is longer than "
                                    f"{_MAX_ATTRIBUTE_CHARS} characters ({self._where()}).")
            values[attribute] = value
        return values

    def _prosody(self, values: dict[str, str]) -> Prosody:
        """A <prosody>'s rate, pitch and volume (range, contour and duration are accepted, unused)."""
        rate, pitch, volume = 1.0, 0.0, 0.0
        if "rate" in values:
            rate = self._measure("rate", values["rate"], _RATES, ("%", None))
            if values["rate"].strip().endswith("%"):
                rate /= 100
            if not SPEED_RANGE[0] <= rate <= SPEED_RANGE[1]:
                raise DocumentError(f"<prosody>: rate {values['rate']!r} is outside "
                                    f"{SPEED_RANGE[0]:g}-{SPEED_RANGE[1]:g} times the voice's "
                                    f"({self._where()}).")
        if "pitch" in values:
            pitch = self._measure("pitch", values["pitch"], _PITCHES, ("st", "%"))
            if "%" in values["pitch"]:
                if pitch <= -100:
                    raise DocumentError(f"<prosody>: pitch {values['pitch']!r} is not a pitch "
                                        f"({self._where()}).")
                pitch = 12 * math.log2(1 + pitch / 100)
            pitch = _checked(pitch, PITCH_RANGE, "pitch", values["pitch"], self._where)
        if "volume" in values:
            volume = self._measure("volume", values["volume"], _VOLUMES, ("dB", "db"))
            volume = _checked(volume, VOLUME_RANGE, "volume", values["volume"], self._where)
        return Prosody(rate, pitch, volume)

    def _measure(self, attribute: str, value: str, words: dict[str, float],
                 units: tuple[str | None, ...]) -> float:
        """A prosody attribute's value: a word from words, or a number with one of units."""
        if value.strip() in words:
            return words[value.strip()]
        match = _NUMBER.match(value)
        unit = match.group(2) if match else None
        if match is None or unit not in units:
            shown = ", ".join(f"'{u}'" for u in units if u) or "no unit"
            raise DocumentError(f"<prosody>: {attribute} {value!r} is not one of "
                                f"{', '.join(words)} or a number with {shown} "
                                f"({self._where()}).")
        return float(match.group(1))

    def end(self, tag: str) -> None:
        """An element closes."""
        name = self._stack[-1].name
        if name == "say-as":
            self._speak_as()
        if name in _BLOCKS or name in _VOICED:
            self._flush()
        if name in _BLOCKS:
            self.items.append(BOUNDARY)
        self._stack.pop()
        if self._alias_depth is not None and len(self._stack) < self._alias_depth:
            self._alias_depth = None

    def _speak_as(self) -> None:
        """A <say-as> ends: its text, normalised to words, joins the run (pointing at its source)."""
        assert self._say_as is not None
        values, pieces, starts = self._say_as
        self._say_as = None
        if self._alias_depth is not None:
            return
        content = clean("".join(pieces))
        if not content.strip():
            return
        try:
            words = say_as(values["interpret-as"], content.strip(), self._top.lang,
                           values.get("format"), values.get("detail"))
        except SayAsError as exc:
            raise DocumentError(f"<say-as>: {exc} ({self._where()}).") from None
        self._add(f" {clean(words)} ", min(starts), self._position())

    def data(self, text: str) -> None:
        """Character data: part of the current run (unless inside a <sub> with an alias)."""
        if self._alias_depth is not None:
            return
        if self._say_as is not None:
            self._say_as[1].append(text)
            self._say_as[2].append(self._position())
            return
        self._add(text, self._position())

    def flush_rest(self) -> None:
        """The document ended: text outside any block (Idlak's loose XML) is a run too."""
        self._flush()

    @staticmethod
    def refuse_doctype(*_args: Any) -> None:
        """No DTD: no entity expansion and no external references, whatever follows."""
        raise DocumentError("Markup must not contain DOCTYPE or ENTITY declarations.")


def _checked(value: float, bounds: tuple[float, float], attribute: str, raw: str,
             where: Callable[[], str]) -> float:
    """value if inside bounds, else a DocumentError naming the attribute."""
    if not bounds[0] <= value <= bounds[1]:
        raise DocumentError(f"<prosody>: {attribute} {raw!r} is outside {bounds[0]:g} to "
                            f"{bounds[1]:+g} ({where()}).")
    return value


def _local_name(tag: str, where: Callable[[], str]) -> str:
    """An element's name without the SSML namespace; other namespaces are refused."""
    namespace, _, name = tag.rpartition(" ")
    if namespace and namespace != SSML_NAMESPACE:
        raise DocumentError(f"<{name}>: namespace {namespace[:_MAX_ATTRIBUTE_CHARS]!r} is not "
                            f"allowed ({where()}).")
    return name


def _attribute_name(raw: str) -> str:
    """An attribute's name with the XML namespace written as 'xml:' (so xml:base is named)."""
    namespace, _, name = raw.rpartition(" ")
    if namespace == XML_NAMESPACE:
        return f"xml:{name}"
    if namespace:
        return f"{namespace[:_MAX_ATTRIBUTE_CHARS]}:{name}"
    return name


def _break_seconds(values: dict[str, str], where: Callable[[], str]) -> float:
    """A break's length: its time ('500ms', '2s', or seconds as Idlak writes them) or strength."""
    if "time" in values:
        match = _TIME.match(values["time"])
        if match is None:
            raise DocumentError(f"<break>: time {values['time']!r} is not a duration such as "
                                f"'500ms' or '2s' ({where()}).")
        seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
        if seconds > MAX_BREAK_SECONDS:
            raise DocumentError(f"<break>: time {values['time']!r} is longer than "
                                f"{MAX_BREAK_SECONDS:g} s ({where()}).")
        return seconds
    strength = values.get("strength", "medium")
    if strength not in _STRENGTHS:
        raise DocumentError(f"<break>: strength {strength!r} is not one of "
                            f"{', '.join(_STRENGTHS)} ({where()}).")
    return _STRENGTHS[strength]


def parse_markup(text: str, prosody: Prosody, lang: str) -> list[Item]:
    """Parse an XML document with the allowlist into runs, breaks and marks."""
    parser = expat.ParserCreate("utf-8", namespace_separator=" ")
    stripped = _leading_stripped(text).rstrip()
    encoded = stripped.encode("utf-8", "surrogatepass")
    index = _SourceIndex(stripped, len(text) - len(_leading_stripped(text)), encoded)
    reader = _MarkupReader(parser, text, index, prosody, lang)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    parser.StartDoctypeDeclHandler = reader.refuse_doctype
    parser.EntityDeclHandler = reader.refuse_doctype
    # Never fetch or read anything: external entities and parameter entities are refused.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.ExternalEntityRefHandler = lambda *_args: 0
    try:
        parser.Parse(encoded, True)
    except expat.ExpatError as exc:
        raise DocumentError(f"Markup is not well-formed XML ({expat.ErrorString(exc.code)}, "
                            f"line {exc.lineno}).") from None
    except RecursionError:
        raise DocumentError("Markup is nested too deeply.") from None
    reader.flush_rest()
    return reader.items
